"""Wire protocol v1 constants shared by the board and the host.

The byte-level contract is specified in docs/protocol.md; this module only names
the numbers. It is imported on the board, so it holds integers and nothing else
(``const`` lets mpy-cross fold them into the code that uses them).
"""

from metal.core.compat import const

PROTO_VERSION = const(1)  # the framing version carried in every header
PROTO_MIN = const(1)  # application protocol versions this code speaks
PROTO_MAX = const(1)

# -- sizes -----------------------------------------------------------------
HEADER_LEN = const(4)
CRC_LEN = const(2)
MAX_PAYLOAD = const(248)
MAX_BODY = const(252)  # HEADER_LEN + MAX_PAYLOAD
# body + CRC is at most 254 bytes, so COBS adds exactly one code byte, and the
# delimiter one more: no frame on the wire is longer than this.
MAX_WIRE = const(256)
MIN_BODY = const(4)

# -- header byte 0: version (high nibble) and message type (low nibble) ----
T_HELLO = const(1)
T_DESCRIBE = const(2)
T_HEARTBEAT = const(3)
T_TELEMETRY = const(4)
T_EVENT = const(5)
T_CMD = const(6)
T_RESULT = const(7)
T_POLICY = const(8)
T_ACK = const(9)
T_NAK = const(10)
T_LOG = const(11)
T_MAX = const(11)

# Types carried on the reliable channel; the others are unreliable.
# Bit i set => type i is reliable.
RELIABLE_TYPES = const((1 << 2) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8))

# -- header byte 1: flags ----------------------------------------------------
F_ACK = const(0x01)  # byte 3 holds a valid cumulative ack

# -- frame/decoder error codes (board side returns these, host raises) ------
E_OK = const(0)
E_COBS = const(1)  # COBS structure invalid
E_SHORT = const(2)  # body shorter than header + CRC
E_OVERSIZE = const(3)  # more than MAX_WIRE bytes before a delimiter
E_CRC = const(4)  # CRC mismatch
E_VERSION = const(5)  # header version nibble is not PROTO_VERSION
E_TYPE = const(6)  # unknown message type
E_CBOR = const(7)  # malformed or truncated CBOR
E_UNSUPPORTED = const(8)  # valid CBOR outside the board subset (float, tag, indefinite)
E_RANGE = const(9)  # integer does not fit in 30 bits (board small-int limit)
E_SCHEMA = const(10)  # well-formed CBOR that does not match the message schema
E_OVERFLOW = const(11)  # encoder ran out of buffer
E_COUNT = const(12)

# -- HELLO keys --------------------------------------------------------------
# board -> host
HELLO_PROTO_MIN = const(0)
HELLO_PROTO_MAX = const(1)
HELLO_BOOT_ID = const(2)
HELLO_SESSION = const(3)
HELLO_BOARD = const(4)
HELLO_FW_VERSION = const(5)
HELLO_UID = const(6)
HELLO_POLICY_VERSION = const(7)
HELLO_DESCRIBE_PARTS = const(8)
# host -> board
HELLO_PROTO = const(0)  # chosen version; 0 = refused
HELLO_REASON = const(9)  # text, with a refusal

# -- DESCRIBE keys (reliable, board -> host, one frame per part) ------------
DESC_PART = const(0)
DESC_PARTS = const(1)
DESC_SECTION = const(2)
DESC_ITEMS = const(3)

# -- HEARTBEAT keys ------------------------------------------------------------
HB_HOST_MS = const(0)  # host -> board: host clock, ms mod 2**30
HB_BOARD_MS = const(1)  # board -> host echo: board uptime, ms mod 2**30

# -- EVENT keys -----------------------------------------------------------
EK_SEQ = const(0)
EK_KIND = const(1)
EK_SOURCE = const(2)
EK_VALUE = const(3)
EK_BOARD_MS = const(4)
EK_AUX = const(5)

# -- CMD / RESULT keys ---------------------------------------------------------
CMD_ID = const(0)
CMD_OP = const(1)
CMD_TARGET = const(2)
CMD_ARG = const(3)
CMD_ARG2 = const(4)

RES_ID = const(0)
RES_CODE = const(1)
RES_VALUE = const(2)

# -- POLICY keys ---------------------------------------------------------------
POL_ID = const(0)  # transfer id (same space as CMD ids; the final RESULT carries it)
POL_VERSION = const(1)
POL_OFFSET = const(2)
POL_TOTAL = const(3)
POL_CHUNK = const(4)
POL_CRC = const(5)  # CRC-16 of the whole table, in the last chunk

# -- LOG keys ------------------------------------------------------------------
LOG_LEVEL = const(0)
LOG_TEXT = const(1)

# -- result codes ----------------------------------------------------------
R_OK = const(0)
R_REJECTED_BY_INTERLOCK = const(1)
R_INVALID_ARGUMENT = const(2)
R_BUSY = const(3)
R_UNKNOWN_TARGET = const(4)
R_UNKNOWN_OP = const(5)
R_MALFORMED = const(6)
R_REJECTED_BY_POLICY = const(7)

# Integers on the board path stay below 2**30 so that a 32-bit MicroPython
# keeps them as small ints (no heap allocation). Counters wrap at this modulus.
INT_LIMIT = const(0x40000000)

# -- CMD ops (target = index into the board's table of that kind) -----------
OP_RAIL_ON = const(1)  # target rail; its parents must be ON
OP_RAIL_OFF = const(2)  # target rail; dependents go down first, in reverse order
OP_RAIL_CYCLE = const(3)  # off, then on again once off
OP_POWER_ON = const(4)  # every rail, in dependency order
OP_POWER_OFF = const(5)  # every rail, orderly reverse order
OP_ZONE_AUTO = const(10)  # target zone back to its controllers
OP_ZONE_MANUAL = const(11)  # target zone, arg = duty per-mille
OP_ZONE_SETPOINT = const(12)  # target zone, arg = setpoint m°C
OP_GPIO_WRITE = const(20)  # target line, arg = 0/1
OP_LOCK = const(30)
OP_UNLOCK = const(31)
OP_ARM = const(32)
OP_DISARM = const(33)
OP_TAMPER_CLEAR = const(34)  # clear the latched tamper flag once the switch is closed
OP_INTERLOCK_CLEAR = const(40)  # target interlock; refused while its condition holds
OP_ESTOP = const(41)  # software emergency stop: arg 1 asserts, 0 releases
OP_REBOOT = const(50)
OP_SET_HB_TIMEOUT = const(51)  # arg = ms
OP_SIM_FAULT = const(60)  # simulator only: target, arg = fault kind, arg2 = value

# simulator fault kinds (OP_SIM_FAULT arg)
FAULT_CLEAR = const(0)  # target -1 clears every fault
FAULT_SENSOR_STUCK = const(1)  # target sensor, arg2 = m°C it reads
FAULT_SENSOR_OPEN = const(2)
FAULT_SENSOR_SHORT = const(3)
FAULT_FAN_STALL = const(4)
FAULT_RAIL_SHORT = const(5)  # overcurrent and voltage collapse on the rail
FAULT_PG_GLITCH = const(6)  # power-good drops for arg2 ms
FAULT_TAMPER = const(7)  # arg2 1 opens the tamper switch, 0 closes it
FAULT_ESTOP = const(8)  # arg2 1 presses the e-stop input, 0 releases it
FAULT_DOOR = const(9)  # arg2 1 opens the door, 0 closes it

# -- EVENT kinds (source = index within the kind's table) -------------------
EV_BOOT = const(1)  # value = reset cause
EV_RAIL_STATE = const(2)  # source rail, value new state, aux fault reason
EV_POWER_STATE = const(3)  # value new system power state
EV_SENSOR_STATE = const(4)  # source sensor, value new sensor state
EV_FAN_STATE = const(5)  # source fan, value new fan state
EV_ZONE_MODE = const(6)  # source zone, value mode (0 auto, 1 manual, 2 failsafe, 3 max)
EV_INTERLOCK_TRIP = const(7)  # source interlock, value the signal's value
EV_INTERLOCK_CLEAR = const(8)  # source interlock
EV_OVERHEAT_START = const(9)  # source sensor, value m°C, aux ms until power-down
EV_OVERHEAT_CANCEL = const(10)
EV_OVERHEAT_POWER_DOWN = const(11)
EV_TAMPER = const(12)  # value 1 opened, 0 closed
EV_LOCK_STATE = const(13)  # value 1 locked, 0 unlocked
EV_LOCK_FAULT = const(14)  # the bolt did not reach the commanded state in time
EV_ARMED = const(15)  # value 1 armed, 0 disarmed
EV_ESTOP = const(16)  # value 1 asserted, 0 released
EV_DOOR = const(17)  # value 1 open, 0 closed
EV_HOST_LOST = const(18)  # value 1 lost, 0 back
EV_LOOP_FAULT = const(19)  # value consecutive overruns
EV_GPIO_CHANGE = const(20)  # source line, value level
EV_SAFE_STATE = const(21)  # value the action taken (config SAFE_*/ACT_*)

# rail fault reasons (EV_RAIL_STATE aux)
RF_NONE = const(0)
RF_PG_TIMEOUT = const(1)  # power-good not seen within the rail's timeout
RF_PG_LOST = const(2)  # power-good dropped while ON
RF_OVERCURRENT = const(3)
RF_PARENT = const(4)  # shut down because a rail it depends on failed
RF_SHED = const(5)  # shed by an interlock

# rail states (also on the wire, telemetry nibbles)
RAIL_OFF = const(0)
RAIL_SEQ_ON = const(1)
RAIL_ON = const(2)
RAIL_SEQ_OFF = const(3)
RAIL_FAULT = const(4)

# system power states (telemetry position 5)
PWR_OFF = const(0)
PWR_SEQ_ON = const(1)
PWR_ON = const(2)
PWR_SEQ_OFF = const(3)
PWR_FAULT = const(4)
PWR_PARTIAL = const(5)  # some rails on, no sequence running

# sensor states
SENSOR_OK = const(0)
SENSOR_STALE = const(1)
SENSOR_OPEN = const(2)
SENSOR_SHORT = const(3)
SENSOR_RANGE = const(4)

# fan states
FAN_OK = const(0)
FAN_STALLED = const(1)
FAN_SPINUP = const(2)
FAN_OFF = const(3)

# telemetry status flag bits (position 4)
STF_HOST_LOST = const(0x001)
STF_ESTOP = const(0x002)
STF_OVERHEAT = const(0x004)
STF_TAMPER = const(0x008)
STF_ARMED = const(0x010)
STF_LOCKED = const(0x020)
STF_DOOR_OPEN = const(0x040)
STF_FAILSAFE = const(0x080)
STF_LOOP_FAULT = const(0x100)
STF_LOCKOUT = const(0x200)
