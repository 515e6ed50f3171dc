"""Decoders from feed bytes to `LabResult`s; each raises `DecodeError` with a PHI-free reason."""

from consumer.formats.detect import decode
from consumer.formats.errors import DecodeError

__all__ = ["DecodeError", "decode"]
