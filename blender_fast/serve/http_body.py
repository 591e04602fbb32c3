"""Reading a request body with bounded cost: its size (declared, received and after decompression), its
nesting depth before decoding, and its encoding (gzip / deflate decoded under the same size limit;
any other Content-Encoding refused with 415)."""
from __future__ import annotations

import json
import re
import zlib

from .schema import HTTPError

MAX_JSON_DEPTH = 64  # the deepest request shape is 4 levels; anything far deeper is garbage or an attack
MAX_BODY_BYTES = 64 * 2**20
# A JSON string (escapes included) or one bracket: strings are skipped so brackets inside texts don't count.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
# Content-Encoding -> zlib's wbits: gzip's header, zlib's (HTTP "deflate"); "identity" is no encoding.
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the body's arrays/objects nest deeper than limit, found by a scan before decoding:
    json.loads recurses once per level and a 100k-deep ``[[[...]]]`` ends in RecursionError."""
    depth = 0
    for m in _JSON_TOKENS.finditer(body):
        c = m.group()[:1]
        if c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


def _too_big(size, max_bytes: int, what: str = "the request body") -> HTTPError:
    return HTTPError(413, f"{what} has {size} bytes; this server accepts at most {max_bytes}")


def _decoder(request):
    """A zlib decompressor for the body's Content-Encoding, None for none; 415 for any other."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _ENCODINGS:
        raise HTTPError(415, f"Content-Encoding {encoding!r} is not supported; send the body plain, gzip or deflate")
    return zlib.decompressobj(_ENCODINGS[encoding])


def _inflate(decoder, chunk: bytes, size: int, max_bytes: int) -> bytes:
    """chunk decompressed, refused with 413 once the decoded body passes max_bytes (a small gzip body
    can hold gigabytes: max_length stops zlib before it makes more than the limit allows)."""
    try:
        out = decoder.decompress(chunk, max_bytes - size + 1)
    except zlib.error as e:
        raise HTTPError(400, f"the request body is not valid gzip/deflate data (its Content-Encoding): {e}") from None
    if size + len(out) > max_bytes or decoder.unconsumed_tail:
        raise _too_big(f"more than {max_bytes}", max_bytes, "the decompressed request body")
    return out


async def read_body(request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body (decompressed), refused with 413 as soon as it (or its declared Content-Length)
    passes max_bytes, so that an oversized body is never held whole in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_big(declared, max_bytes)
    decoder = _decoder(request)
    chunks, received, size = [], 0, 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_big(f"more than {max_bytes}", max_bytes)
        if decoder is not None:
            chunk = _inflate(decoder, chunk, size, max_bytes)
        size += len(chunk)
        chunks.append(chunk)
    if decoder is not None:
        if not decoder.eof:
            raise HTTPError(400, "the request body ends before its compressed data does")
        tail = decoder.flush()
        if size + len(tail) > max_bytes:
            raise _too_big(f"more than {max_bytes}", max_bytes, "the decompressed request body")
        chunks.append(tail)
    return b"".join(chunks)


def decode_json(body: bytes, max_bytes: int = MAX_BODY_BYTES):
    """The decoded body; HTTPError 413 past max_bytes, 422 when nested too deeply or not JSON."""
    if len(body) > max_bytes:
        raise _too_big(len(body), max_bytes)
    if json_depth_exceeds(body):
        raise HTTPError(422, f"the request body nests arrays/objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(422, f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # the depth scan should have caught it; never a 500 for a malformed body
        raise HTTPError(422, "the request body nests arrays/objects too deeply") from None
