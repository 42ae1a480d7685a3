"""Headless body renderer (moderngl + EGL): RGB, metric depth and silhouette of crops.

Renders straight into the ``s x s`` crop with the crop intrinsics (``d2a_edge.camera``). The
GL projection keeps the OpenCV pixel convention: pixel (i, j) has its centre at (u, v) = (i, j)
and row 0 of the read-back is the top image row. Normals come from screen-space derivatives
(flat shading; at 192 px a triangle covers about one pixel). Back faces are culled.
"""
from __future__ import annotations

import os
import time

import numpy as np

from d2a_edge.training.data.appearance import PARTS, Material

NEAR, FAR = 0.05, 200.0
_CONTEXTS: dict[int, object] = {}  # pid -> moderngl.Context, created lazily once per process

VERTEX_SHADER = """#version 330
uniform mat4 proj;
in vec3 in_pos;
in vec3 in_rest;
in float in_part;
out vec3 v_pos;
out vec3 v_rest;
flat out int v_part;
void main() {
    v_pos = in_pos;
    v_rest = in_rest;
    v_part = int(in_part + 0.5);
    gl_Position = proj * vec4(in_pos, 1.0);
}
"""
FRAGMENT_SHADER = """#version 330
#define P %d
uniform vec3 color1[P];
uniform vec3 color2[P];
uniform int pattern[P];
uniform float freq[P];
uniform vec3 light_dir;
uniform vec3 light_color;
uniform float ambient;
uniform float diffuse;
uniform float specular;
in vec3 v_pos;
in vec3 v_rest;
flat in int v_part;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
float pattern_mask(int kind, vec3 p, float f) {
    if (kind == 1) return step(0.5, fract(p.y * f));
    if (kind == 2) return mod(floor(p.x * f) + floor(p.y * f) + floor(p.z * f), 2.0);
    if (kind == 3) return step(length(fract(p.xy * f) - 0.5), 0.22);
    return 0.0;
}
void main() {
    vec3 n = normalize(cross(dFdx(v_pos), dFdy(v_pos)));
    if (dot(n, v_pos) > 0.0) n = -n;
    float t = pattern_mask(pattern[v_part], v_rest, freq[v_part]);
    vec3 albedo = mix(color1[v_part], color2[v_part], t);
    vec3 view = normalize(-v_pos);
    float lambert = max(dot(n, light_dir), 0.0);
    float spec = pow(max(dot(n, normalize(light_dir + view)), 0.0), 24.0);
    vec3 c = albedo * (ambient + diffuse * lambert) * light_color + specular * spec * light_color;
    out_color = vec4(clamp(c, 0.0, 1.0), 1.0);
    out_depth = v_pos.z;
}
""" % len(PARTS)


def gl_projection(K: np.ndarray, size: int) -> np.ndarray:
    """(4, 4) float32 clip-from-camera matrix for intrinsics K (3, 3) and an s x s target."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    a, b = (FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR)
    return np.array([[2 * fx / size, K[0, 1] * 2 / size, 2 * (cx + 0.5) / size - 1, 0],
                     [0, 2 * fy / size, 2 * (cy + 0.5) / size - 1, 0],
                     [0, 0, a, b], [0, 0, 1, 0]], np.float32)


def egl_context():
    """This process's headless moderngl context (created on first use).

    A process forked from one that already holds a context cannot create its own (Mesa's
    threads and locks do not survive fork; it deadlocks), so that case raises instead.
    """
    ctx = _CONTEXTS.get(os.getpid())
    if ctx is None:
        if _CONTEXTS:
            raise RuntimeError(
                "this process was forked from one that already created an EGL context, and EGL "
                "cannot be re-initialised after fork: render only in the workers, or use "
                "DataLoader(..., multiprocessing_context='spawn') / multiprocessing 'spawn'")
        ctx = create_egl_context()
        _CONTEXTS[os.getpid()] = ctx
    return ctx


def holds_egl_context() -> bool:
    """Whether this process has created its EGL context (a child forked now could not)."""
    return os.getpid() in _CONTEXTS


def create_egl_context():
    """A new standalone EGL context, or a RuntimeError that says what to install."""
    try:
        import moderngl
    except ImportError as e:
        raise RuntimeError("the renderer needs moderngl: pip install 'd2a-edge[train]'") from e
    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as e:  # moderngl/glcontext raise bare Exception subclasses
        raise RuntimeError(
            f"could not create a headless EGL OpenGL context ({type(e).__name__}: {e}). On CPU "
            "machines install Mesa EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri); on NVIDIA "
            "GPUs install the GL vendor libraries and set __EGL_VENDOR_LIBRARY_FILENAMES to "
            "10_nvidia.json (README, \"GPU training\")") from e


TILE_COLS = 8  # a batch renders into an atlas of up to TILE_COLS x TILE_COLS crops per pass


class BodyRenderer:
    """Renders body meshes into ``size x size`` crops; one instance per process.

    faces: (F, 3) int; rest: (V, 3) rest-pose coordinates (pattern space); parts: (V,) int.

    ``render_batch`` draws a whole batch into tiles of one atlas framebuffer (viewport and
    scissor per tile, one vertex buffer per tile) and reads it back once, so the GPU is
    synchronised once per batch instead of three times per crop.
    """

    def __init__(self, faces: np.ndarray, rest: np.ndarray, parts: np.ndarray, size: int):
        import moderngl

        if size < 16:
            raise ValueError(f"render size must be >= 16 pixels, got {size}")
        self.size, self.num_vertices = size, len(rest)
        ctx = self.ctx = egl_context()
        self.prog = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        static = np.concatenate([rest, parts[:, None]], 1).astype(np.float32)  # (V, 4)
        self.sbo = ctx.buffer(static.tobytes())
        self.ibo = ctx.buffer(np.ascontiguousarray(faces, np.int32).tobytes())
        self._slots: list[tuple[object, object]] = []  # (vbo, vao) per tile, made on first use
        side = TILE_COLS * size
        self.fbo = ctx.framebuffer(
            [ctx.renderbuffer((side, side), 4), ctx.renderbuffer((side, side), 1, dtype="f4")],
            ctx.depth_renderbuffer((side, side)))
        self._moderngl = moderngl

    def _slot(self, k: int):
        while len(self._slots) <= k:
            vbo = self.ctx.buffer(reserve=self.num_vertices * 12)
            vao = self.ctx.vertex_array(self.prog, [(vbo, "3f", "in_pos"),
                                                    (self.sbo, "3f 1f", "in_rest", "in_part")],
                                        index_buffer=self.ibo)
            self._slots.append((vbo, vao))
        return self._slots[k]

    def render(self, verts: np.ndarray, K: np.ndarray, material: Material,
               timings: dict[str, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """verts (V, 3) camera frame, K (3, 3) crop intrinsics ->
        rgb (s, s, 3) uint8 (background black), depth (s, s) float32 z in metres (0 = none),
        mask (s, s) uint8. ``timings`` (optional) accumulates "render" and "readback" seconds."""
        rgb, depth, mask = self.render_batch(verts[None], K[None], [material], timings)
        return rgb[0], depth[0], mask[0]

    def render_batch(self, verts: np.ndarray, K: np.ndarray, materials: list[Material],
                     timings: dict[str, float] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """verts (N, V, 3), K (N, 3, 3), N materials -> rgb (N, s, s, 3) uint8,
        depth (N, s, s) float32, mask (N, s, s) uint8; the same pixels as N ``render`` calls."""
        verts, K = np.asarray(verts), np.asarray(K)
        n = len(verts)
        if verts.shape != (n, self.num_vertices, 3) or K.shape != (n, 3, 3) or len(materials) != n:
            raise ValueError(f"need verts (N, {self.num_vertices}, 3), K (N, 3, 3) and N materials; "
                             f"got {verts.shape}, {K.shape}, {len(materials)}")
        s = self.size
        rgb = np.empty((n, s, s, 3), np.uint8)
        depth = np.empty((n, s, s), np.float32)
        per_pass = TILE_COLS * TILE_COLS
        for start in range(0, n, per_pass):
            stop = min(start + per_pass, n)
            self._render_pass(verts[start:stop], K[start:stop], materials[start:stop],
                              rgb[start:stop], depth[start:stop], timings)
        return rgb, depth, (depth > 0).astype(np.uint8)

    def _render_pass(self, verts, K, materials, rgb_out, depth_out, timings) -> None:
        t0 = time.perf_counter()
        s, ctx, prog, n = self.size, self.ctx, self.prog, len(verts)
        cols = min(n, TILE_COLS)
        rows = -(-n // TILE_COLS)
        area = (0, 0, cols * s, rows * s)
        self.fbo.use()
        ctx.scissor = None
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=area)
        ctx.enable(self._moderngl.DEPTH_TEST | self._moderngl.CULL_FACE)
        ctx.front_face = "cw"
        for k in range(n):
            vbo, vao = self._slot(k)
            vbo.write(np.ascontiguousarray(verts[k], np.float32))
            prog["proj"].write(np.ascontiguousarray(gl_projection(K[k], s).T))
            m = materials[k]
            for name in ("color1", "color2", "light_dir", "light_color"):
                prog[name].write(np.ascontiguousarray(getattr(m, name), np.float32))
            prog["pattern"].write(np.ascontiguousarray(m.pattern, np.int32))
            prog["freq"].write(np.ascontiguousarray(m.freq, np.float32))
            for name in ("ambient", "diffuse", "specular"):
                prog[name].value = float(getattr(m, name))
            tile = ((k % TILE_COLS) * s, (k // TILE_COLS) * s, s, s)
            ctx.viewport = ctx.scissor = tile
            vao.render()
        ctx.scissor = None
        if timings is not None:
            ctx.finish()
            t1 = time.perf_counter()
        h, w = rows * s, cols * s
        color = np.frombuffer(self.fbo.read(viewport=area, components=3, attachment=0),
                              np.uint8).reshape(h, w, 3)
        z = np.frombuffer(self.fbo.read(viewport=area, components=1, attachment=1, dtype="f4"),
                          np.float32).reshape(h, w)
        for k in range(n):  # row 0 of the read-back is the atlas' bottom row = tile row 0
            r, c = divmod(k, TILE_COLS)
            rgb_out[k] = color[r * s:(r + 1) * s, c * s:(c + 1) * s]
            depth_out[k] = z[r * s:(r + 1) * s, c * s:(c + 1) * s]
        if timings is not None:
            timings["render"] += t1 - t0
            timings["readback"] += time.perf_counter() - t1
