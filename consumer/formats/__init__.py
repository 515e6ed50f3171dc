"""Decoders from feed bytes to `LabResult`s; each raises `DecodeError` with a PHI-free reason."""

from consumer.formats.detect import Format, decode, detect
from consumer.formats.errors import DecodeError, Relevance

__all__ = ["DecodeError", "Format", "Relevance", "decode", "detect"]
