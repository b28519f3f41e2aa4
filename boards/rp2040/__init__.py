"""Raspberry Pi Pico (RP2040): ``board`` (pin map and BoardConfig, importable
anywhere), ``hal`` (Rp2040Hal over ``machine``, on the board only) and
``main`` (the board's /main.py entry). Nothing is imported here, so the host
can read the pin map and config without a ``machine`` module."""
