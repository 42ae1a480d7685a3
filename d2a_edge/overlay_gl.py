"""Mesh overlays rendered with moderngl (headless EGL): depth-tested, smooth-shaded.

Optional: needs ``moderngl`` and an EGL driver (Mesa on CPU machines, the NVIDIA driver on GPUs).
``make_mesh_drawer("auto")`` returns this renderer when it works here, else the OpenCV painter
``overlay.draw_mesh``; both have the signature ``draw(image, verts, faces, K, alpha) -> image``.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("d2a_edge")

_VERTEX = """
#version 330
uniform vec4 intr;      // fx, fy, cx, cy (pixels)
uniform vec2 size;      // W, H
uniform vec2 depth;     // near, far (metres)
in vec3 in_pos;         // camera frame: x right, y down, z forward
in vec3 in_normal;
out vec3 v_normal;
void main() {
    float z = max(in_pos.z, 1e-4);
    vec2 uv = vec2(intr.x * in_pos.x / z + intr.z, intr.y * in_pos.y / z + intr.w);
    // row 0 of the read-back buffer is NDC y = -1: map image row v = 0 there
    vec2 ndc = 2.0 * uv / size - 1.0;
    float zn = 2.0 * (in_pos.z - depth.x) / (depth.y - depth.x) - 1.0;
    gl_Position = vec4(ndc, zn, 1.0);
    v_normal = in_normal;
}
"""

_FRAGMENT = """
#version 330
uniform vec3 color;     // RGB 0..1
in vec3 v_normal;
out vec4 f_color;
void main() {
    vec3 n = normalize(v_normal);
    float lambert = abs(dot(n, normalize(vec3(0.3, 0.5, 1.0))));
    f_color = vec4(color * (0.25 + 0.75 * lambert), 1.0);
}
"""


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) float32."""
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return (n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


class GLMeshDrawer:
    """Draws camera-frame meshes over BGR frames with OpenGL; one context per instance."""

    def __init__(self):
        import moderngl  # ImportError when the optional dependency is missing
        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.prog = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self._fbo, self._size = None, None

    def _framebuffer(self, W: int, H: int):
        if self._size != (W, H):
            if self._fbo is not None:
                self._fbo.release()
            self._fbo = self.ctx.simple_framebuffer((W, H), components=4)
            self._size = (W, H)
        return self._fbo

    def __call__(self, image: np.ndarray, verts: np.ndarray, faces: np.ndarray, K: np.ndarray,
                 color=(120, 170, 210), alpha: float = 0.7) -> np.ndarray:
        """``image`` (H, W, 3) uint8 BGR with the mesh blended in (alpha where it covers)."""
        import moderngl
        H, W = image.shape[:2]
        verts = np.asarray(verts, np.float32)
        faces = np.asarray(faces, np.int32)
        z = verts[:, 2][verts[:, 2] > 1e-3]
        if len(z) == 0:
            return image.copy()
        fbo = self._framebuffer(W, H)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.prog["intr"].value = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        self.prog["size"].value = (float(W), float(H))
        self.prog["depth"].value = (float(max(z.min() * 0.5, 1e-3)), float(z.max() * 2.0 + 1.0))
        self.prog["color"].value = tuple(c / 255.0 for c in color[::-1])  # BGR -> RGB
        data = np.hstack([verts, vertex_normals(verts, faces)]).astype(np.float32)
        vbo = self.ctx.buffer(data.tobytes())
        ibo = self.ctx.buffer(faces.tobytes())
        vao = self.ctx.vertex_array(self.prog, [(vbo, "3f 3f", "in_pos", "in_normal")], ibo)
        try:
            vao.render(moderngl.TRIANGLES)
            rgba = np.frombuffer(fbo.read(components=4), np.uint8).reshape(H, W, 4)
        finally:
            vao.release()
            vbo.release()
            ibo.release()
        a = (rgba[..., 3:4].astype(np.float32) / 255.0) * alpha
        out = image.astype(np.float32) * (1 - a) + rgba[..., 2::-1].astype(np.float32) * a
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        if self._fbo is not None:
            self._fbo.release()
        self.ctx.release()


def make_mesh_drawer(kind: str = "auto"):
    """``"gl"`` (moderngl; RuntimeError when it cannot run here), ``"cv"`` (OpenCV painter) or
    ``"auto"`` (GL when it works, else OpenCV; the choice is logged)."""
    from d2a_edge.overlay import draw_mesh
    if kind not in ("auto", "gl", "cv"):
        raise ValueError(f"overlay must be auto, gl or cv, got {kind!r}")
    if kind == "cv":
        return draw_mesh
    try:
        drawer = GLMeshDrawer()
    except Exception as e:  # ImportError, or moderngl's bare Exception when EGL is missing
        if kind == "gl":
            raise RuntimeError(f"the OpenGL overlay cannot run here ({type(e).__name__}: {e}); "
                               "install moderngl and EGL (Debian libegl1) or use --overlay cv") from e
        log.info("d2a_edge: OpenGL overlay unavailable (%s); drawing with OpenCV", e)
        return draw_mesh
    log.info("d2a_edge: overlay rendered with OpenGL (%s)", drawer.ctx.info.get("GL_RENDERER"))
    return drawer
