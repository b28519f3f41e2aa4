"""The simulated reference board: ``board`` (its BoardConfig), ``plant``
(the physics) and ``hal`` (SimHal over the plant). Import the submodule you
need; nothing is imported here so the board stays cheap to load on a VM."""
