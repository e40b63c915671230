"""Units. Everything inside helix is SI: bytes, seconds, bytes/s, tokens/s.

Bandwidths are written by people in Gbit/s (`_gbps`) or Mbit/s (`_mbps`); `gbps_to_bytes_per_s`
converts with the factor 8. Helix's artifact divides bit rates by byte sizes without the 8 (its "1 Gbps"
link carries 1e9 bytes/s); `helix_units=True` loaders reproduce that on purpose.
"""

from __future__ import annotations

KB = 1e3
MB = 1e6
GB = 1e9
GIB = 1024**3
MS = 1e-3

#: Names allowed inside Helix INI expressions such as ``1000 * mbps`` or ``54 * MilliSec``.
HELIX_INI_NAMES: dict[str, float] = {
    "kbps": 1e3,
    "mbps": 1e6,
    "gbps": 1e9,
    "Byte": 1.0,
    "KB": KB,
    "MB": MB,
    "GB": GB,
    "Sec": 1.0,
    "MilliSec": MS,
}


def gbps_to_bytes_per_s(gbps: float) -> float:
    """Gbit/s → bytes/s."""
    return gbps * 1e9 / 8.0


def mbps_to_bytes_per_s(mbps: float) -> float:
    """Mbit/s → bytes/s."""
    return mbps * 1e6 / 8.0


def bytes_per_s_to_gbps(bytes_per_s: float) -> float:
    """bytes/s → Gbit/s."""
    return bytes_per_s * 8.0 / 1e9
