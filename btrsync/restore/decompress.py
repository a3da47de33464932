"""Decompress the extents of ENCODED_WRITE (send protocol 2, ``--compressed-data``).

btrfs sends a compressed extent exactly as it lies on disk; btrfs-progs' ``receive`` falls back
to decompressing it (``decompress_and_write``) when it cannot write it encoded, and this module
does the same, for the formats btrfs uses (``BTRFS_ENCODED_IO_COMPRESSION_*``):

- 1 zlib: one zlib stream (with header), padded with zeros to the sector size;
- 2 zstd: one zstd frame, padded likewise;
- 3-7 lzo with 4, 8, 16, 32 or 64 KiB sectors: ``le32 total length`` (header included), then
  segments ``le32 length | LZO1X data``, each decompressing to at most one sector; a segment
  header never straddles a sector boundary (fewer than 4 bytes left in a sector are padding).

The output is always exactly ``unencoded_len`` bytes: a shorter decompression is zero-filled, as
btrfs does. LZO1X is decoded by :func:`lzo1x_decompress` (pure Python, after the kernel's
``lzo1x_decompress_safe``: every input and back-reference is bounds-checked), or by the
``python-lzo`` package when it is installed (not required: it has no Linux wheel).
"""

from __future__ import annotations

import struct
import zlib

import zstandard

NONE, ZLIB, ZSTD = 0, 1, 2
LZO_FIRST, LZO_LAST = 3, 7
NAMES = {NONE: "none", ZLIB: "zlib", ZSTD: "zstd", 3: "lzo (4 KiB sectors)", 4: "lzo (8 KiB sectors)",
         5: "lzo (16 KiB sectors)", 6: "lzo (32 KiB sectors)", 7: "lzo (64 KiB sectors)"}
MAX_UNENCODED = 16 << 20  # btrfs extents decompress to at most 128 KiB; anything near this is hostile

try:  # optional speed-up
    import lzo as _lzo  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the usual case
    _lzo = None


class DecompressError(ValueError):
    pass


def decompress(kind: int, data: bytes | memoryview, unencoded_len: int) -> bytes:
    """``unencoded_len`` bytes from one encoded extent of compression ``kind``."""
    if unencoded_len > MAX_UNENCODED:
        raise DecompressError(f"unencoded length {unencoded_len} is implausibly large")
    if kind == NONE:
        out = bytes(data[:unencoded_len])
    elif kind == ZLIB:
        try:
            out = zlib.decompressobj().decompress(bytes(data), unencoded_len)
        except zlib.error as exc:
            raise DecompressError(f"zlib: {exc}") from None
    elif kind == ZSTD:
        out = _zstd(data, unencoded_len)
    elif LZO_FIRST <= kind <= LZO_LAST:
        out = _btrfs_lzo(bytes(data), unencoded_len, 4096 << (kind - LZO_FIRST))
    else:
        raise DecompressError(f"unknown compression type {kind}")
    if len(out) < unencoded_len:
        out = out + bytes(unencoded_len - len(out))
    return out


def _zstd(data: bytes | memoryview, limit: int) -> bytes:
    """One frame (the zero padding after it is not a frame: never read on), at most ``limit``
    bytes; one ``read`` returns at the frame's end or at ``limit``, whichever comes first."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(bytes(data), read_across_frames=False) as reader:
            return reader.read(limit) if limit else b""
    except zstandard.ZstdError as exc:
        raise DecompressError(f"zstd: {exc}") from None


def _btrfs_lzo(data: bytes, unencoded_len: int, sector: int) -> bytes:
    """btrfs-progs ``decompress_lzo``."""
    if len(data) < 4:
        raise DecompressError("lzo: header is truncated")
    (total,) = struct.unpack_from("<I", data, 0)
    if total > len(data):
        raise DecompressError("lzo: header is invalid (total length beyond the data)")
    pos, out = 4, bytearray()
    while pos < total and len(out) < unencoded_len:
        remaining = -pos % sector
        if remaining < 4:
            if total - pos <= remaining:
                break
            pos += remaining
        if pos + 4 > total:
            raise DecompressError("lzo: segment header is truncated")
        (seg_len,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if seg_len > total - pos:
            raise DecompressError("lzo: segment too big")
        segment = data[pos:pos + seg_len]
        if _lzo is not None:
            try:
                out += _lzo.decompress(segment, False, sector)
            except _lzo.error as exc:
                raise DecompressError(f"lzo: {exc}") from None
        else:
            out += lzo1x_decompress(segment, sector)
        pos += seg_len
    return bytes(out[:unencoded_len])


def lzo1x_decompress(src: bytes, max_out: int) -> bytes:
    """LZO1X (as written by ``lzo1x_1_compress``), at most ``max_out`` bytes; errors raise."""
    out = bytearray()
    n = len(src)
    ip = 0

    def need_ip(k: int) -> None:
        if ip + k > n:
            raise DecompressError("lzo: input overrun")

    def need_op(k: int) -> None:
        if len(out) + k > max_out:
            raise DecompressError("lzo: output overrun")

    def run_length(ip: int, base: int) -> tuple[int, int]:
        """A length byte of 0 continues: each further 0 adds 255; the first non-zero ends it."""
        start = ip
        while True:
            if ip >= n:
                raise DecompressError("lzo: input overrun")
            if src[ip] != 0:
                break
            ip += 1
        zeros = ip - start
        return zeros * 255 + base + src[ip], ip + 1

    def copy_match(m_pos: int, t: int) -> None:
        if m_pos < 0:
            raise DecompressError("lzo: look-behind overrun")
        need_op(t)
        while t > 0:  # overlapping copies repeat the pattern, as a byte-by-byte copy would
            k = min(t, len(out) - m_pos)
            out.extend(out[m_pos:m_pos + k])
            m_pos += k
            t -= k

    if n < 3:
        raise DecompressError("lzo: input too short")
    state = 0
    nxt = 0
    if src[0] > 17:
        t = src[0] - 17
        ip = 1
        if t < 4:
            nxt = t
            need_ip(t)
            need_op(t)
            out += src[ip:ip + t]
            ip += t
            state = t
        else:
            need_ip(t)
            need_op(t)
            out += src[ip:ip + t]
            ip += t
            state = 4
    while True:
        need_ip(1)
        t = src[ip]
        ip += 1
        if t < 16:
            if state == 0:  # a literal run
                if t == 0:
                    t, ip = run_length(ip, 15)
                t += 3
                need_ip(t)
                need_op(t)
                out += src[ip:ip + t]
                ip += t
                state = 4
                continue
            if state != 4:  # M1: 2 bytes, close by, after a match's trailing literals
                need_ip(1)
                nxt = t & 3
                m_pos = len(out) - 1 - (t >> 2) - (src[ip] << 2)
                ip += 1
                copy_match(m_pos, 2)
            else:  # 3 bytes right after a literal run, 2049.. back
                need_ip(1)
                nxt = t & 3
                m_pos = len(out) - (1 + 0x0800) - (t >> 2) - (src[ip] << 2)
                ip += 1
                copy_match(m_pos, 3)
        elif t >= 64:  # M2
            need_ip(1)
            nxt = t & 3
            m_pos = len(out) - 1 - ((t >> 2) & 7) - (src[ip] << 3)
            ip += 1
            copy_match(m_pos, (t >> 5) + 1)
        elif t >= 32:  # M3
            t &= 31
            if t == 0:
                t, ip = run_length(ip, 31)
            t += 2
            need_ip(2)
            word = src[ip] | (src[ip + 1] << 8)
            ip += 2
            nxt = word & 3
            copy_match(len(out) - 1 - (word >> 2), t)
        else:  # M4 (16..31), or the end marker
            m_pos = len(out) - ((t & 8) << 11)
            t &= 7
            if t == 0:
                t, ip = run_length(ip, 7)
            t += 2
            need_ip(2)
            word = src[ip] | (src[ip + 1] << 8)
            ip += 2
            nxt = word & 3
            m_pos -= word >> 2
            if m_pos == len(out):  # end of stream
                if t != 3:
                    raise DecompressError("lzo: bad end marker")
                if ip != n:
                    raise DecompressError("lzo: input not consumed" if ip < n else "lzo: input overrun")
                return bytes(out)
            copy_match(m_pos - 0x4000, t)
        # up to 3 literals follow a match
        state = nxt
        if nxt:
            need_ip(nxt)
            need_op(nxt)
            out += src[ip:ip + nxt]
            ip += nxt
