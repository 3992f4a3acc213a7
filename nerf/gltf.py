"""Binary glTF 2.0 (.glb) of one textured triangle mesh, assembled directly from arrays.

The exported mesh is one primitive with positions, texture coordinates, 32-bit indices and a base-colour PNG, so
the container is a few dozen lines of the format's own structure. Writing it here, instead of through a general
mesh library, embeds the PNG the export has already encoded (a library encodes it again) and avoids that library's
import (about half a second), both on the critical path of every `--save_mesh` run.
"""

from __future__ import annotations

import json
import struct

import numpy as np

GLB_MAGIC, GLB_VERSION = 0x46546C67, 2  # "glTF"
JSON_CHUNK, BINARY_CHUNK = 0x4E4F534A, 0x004E4942  # "JSON", "BIN\0"
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_INT = 5126, 5125
TRIANGLES = 4
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071  # an atlas must not wrap across its border


def _padding(length: int) -> int:
    """Bytes that bring `length` to the next multiple of 4 (chunks and buffer views are 4-byte aligned)."""
    return -length % 4


def textured_mesh_glb(vertices: np.ndarray, uv: np.ndarray, faces: np.ndarray, png: bytes,
                      generator: str = "realfusion") -> bytes:
    """The .glb bytes of a mesh whose vertex i has position `vertices[i]` and texture coordinate `uv[i]`.

    `uv` is in glTF's (and the image's) convention: u to the right, v downwards from the top-left corner. The
    material is non-metallic and fully rough, so viewers show the baked albedo as it is.
    """
    positions = np.ascontiguousarray(vertices, dtype="<f4")
    texcoords = np.ascontiguousarray(uv, dtype="<f4")
    indices = np.ascontiguousarray(faces, dtype="<u4")
    if positions.ndim != 2 or positions.shape[1] != 3 or texcoords.shape != (len(positions), 2):
        raise ValueError(f"need vertices [V, 3] and uv [V, 2], got {positions.shape} and {texcoords.shape}")
    if indices.ndim != 2 or indices.shape[1] != 3 or (indices.size and int(indices.max()) >= len(positions)):
        raise ValueError(f"faces must be [F, 3] indices below {len(positions)}")
    blobs = [(positions.tobytes(), ARRAY_BUFFER), (texcoords.tobytes(), ARRAY_BUFFER),
             (indices.tobytes(), ELEMENT_ARRAY_BUFFER), (png, None)]
    views, offset = [], 0
    for blob, target in blobs:
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob),
                      **({"target": target} if target else {})})
        offset += len(blob) + _padding(len(blob))
    binary = b"".join(blob + b"\0" * _padding(len(blob)) for blob, _ in blobs)
    document = {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0,
                                    "mode": TRIANGLES}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0}}],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE,
                      "wrapT": CLAMP_TO_EDGE}],
        "images": [{"bufferView": 3, "mimeType": "image/png"}],
        "accessors": [
            {"bufferView": 0, "componentType": FLOAT, "count": len(positions), "type": "VEC3",
             "min": positions.min(0).tolist() if len(positions) else [0.0] * 3,
             "max": positions.max(0).tolist() if len(positions) else [0.0] * 3},
            {"bufferView": 1, "componentType": FLOAT, "count": len(texcoords), "type": "VEC2"},
            {"bufferView": 2, "componentType": UNSIGNED_INT, "count": int(indices.size), "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    }
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * _padding(len(text))
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total), struct.pack("<II", len(text), JSON_CHUNK),
                     text, struct.pack("<II", len(binary), BINARY_CHUNK), binary])
