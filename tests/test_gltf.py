"""The binary glTF writer and the OBJ formatter of the mesh export, against independent readers and formatters."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from nerf.gltf import BINARY_CHUNK, GLB_MAGIC, JSON_CHUNK, textured_mesh_glb
from nerf.mesh import obj_text, png_bytes


@pytest.fixture(scope="module")
def quad() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two triangles (5 vertices, so that no buffer is a multiple of 4 by accident) and a 3x5 texture."""
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.5], [0.2, 0.3, -0.7]], np.float32)
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0], [0.5, 0.25]], np.float32)  # v downwards
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    texture = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    return vertices, uv, faces, texture


def split_glb(data: bytes) -> tuple[dict, bytes]:
    """Header and chunks read by the format's rules: the JSON document and the binary buffer."""
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert (magic, version, total) == (GLB_MAGIC, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == JSON_CHUNK and json_length % 4 == 0
    document = json.loads(data[20 : 20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == BINARY_CHUNK and bin_length % 4 == 0 and 28 + json_length + bin_length == len(data)
    return document, data[28 + json_length :]


def view_bytes(document: dict, binary: bytes, view: int) -> bytes:
    entry = document["bufferViews"][view]
    assert entry["byteOffset"] % 4 == 0 and entry["byteOffset"] + entry["byteLength"] <= len(binary)
    return binary[entry["byteOffset"] : entry["byteOffset"] + entry["byteLength"]]


def test_glb_chunks_views_and_accessors_follow_the_format(quad) -> None:
    vertices, uv, faces, texture = quad
    png = png_bytes(texture)
    document, binary = split_glb(textured_mesh_glb(vertices, uv, faces, png))
    assert document["asset"]["version"] == "2.0" and document["buffers"] == [{"byteLength": len(binary)}]
    primitive = document["meshes"][0]["primitives"][0]
    accessors = document["accessors"]
    position = accessors[primitive["attributes"]["POSITION"]]
    np.testing.assert_array_equal(position["min"], vertices.min(0))  # required by the format for positions
    np.testing.assert_array_equal(position["max"], vertices.max(0))
    read = {name: np.frombuffer(view_bytes(document, binary, accessors[index]["bufferView"]), dtype)
            for name, index, dtype in (("position", primitive["attributes"]["POSITION"], "<f4"),
                                       ("uv", primitive["attributes"]["TEXCOORD_0"], "<f4"),
                                       ("indices", primitive["indices"], "<u4"))}
    np.testing.assert_array_equal(read["position"].reshape(-1, 3), vertices)
    np.testing.assert_array_equal(read["uv"].reshape(-1, 2), uv)
    np.testing.assert_array_equal(read["indices"].reshape(-1, 3), faces)
    image = document["images"][document["textures"][0]["source"]]
    assert image["mimeType"] == "image/png" and view_bytes(document, binary, image["bufferView"]) == png


def test_glb_loads_in_trimesh_with_the_same_mesh_and_texture(quad, tmp_path) -> None:
    vertices, uv, faces, texture = quad
    path = tmp_path / "mesh.glb"
    path.write_bytes(textured_mesh_glb(vertices, uv, faces, png_bytes(texture)))
    mesh = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_allclose(mesh.vertices, vertices)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_allclose(mesh.visual.uv, np.stack([uv[:, 0], 1 - uv[:, 1]], -1))  # trimesh keeps v upwards
    np.testing.assert_array_equal(np.asarray(mesh.visual.material.baseColorTexture.convert("RGB")), texture)


def test_glb_rejects_mismatched_arrays(quad) -> None:
    vertices, uv, faces, texture = quad
    with pytest.raises(ValueError, match="uv"):
        textured_mesh_glb(vertices, uv[:-1], faces, b"")
    with pytest.raises(ValueError, match="faces"):
        textured_mesh_glb(vertices, uv, faces + 3, b"")


def test_png_round_trips_the_texture(quad) -> None:
    texture = quad[3]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(texture)))), texture)


def test_obj_text_matches_row_by_row_formatting(quad) -> None:
    vertices, uv, faces, _ = quad
    uv_faces = faces[:, ::-1].copy()
    expected = io.StringIO()
    expected.write("mtllib mesh.mtl\nusemtl mat0\n")
    np.savetxt(expected, vertices, fmt="v %.6f %.6f %.6f")
    np.savetxt(expected, np.stack([uv[:, 0], 1 - uv[:, 1]], -1), fmt="vt %.6f %.6f")
    np.savetxt(expected, np.stack([faces + 1, uv_faces + 1], -1).reshape(-1, 6), fmt="f %d/%d %d/%d %d/%d")
    assert obj_text(vertices, uv, faces, uv_faces) == expected.getvalue()
