"""ESP32 DevKit (ESP32-WROOM-32): ``board`` (pin map and BoardConfig,
importable anywhere), ``hal`` (Esp32Hal over ``machine``, on the board only)
and ``main`` (the board's /main.py entry). Nothing is imported here, so the
host can read the pin map and config without a ``machine`` module."""
