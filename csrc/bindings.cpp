// pybind11 module d2a_edge._lbs_cuda: BodyBuffers on raw device pointers + a CUDA stream handle,
// so TensorRT bindings, cuda-python allocations and torch tensors (data_ptr()) all work.
// std::invalid_argument -> ValueError, std::runtime_error (CUDA failures) -> RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <type_traits>
#include <string>
#include <vector>

#include "body_buffers.h"
#include "cuda_check.h"

namespace py = pybind11;

namespace {

std::string shape_text(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks ndim and the fixed dimensions (-1: any) of `a`; returns its shape.
std::vector<py::ssize_t> check_shape(const py::array& a, const char* name,
                                     const std::vector<py::ssize_t>& want, const char* expected) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || a.shape(i) == want[i];
  if (!ok) {
    throw py::value_error(std::string(name) + " must have shape " + expected + ", got " +
                          shape_text(a));
  }
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

template <typename T>
std::vector<T> to_vector(const py::array& a, const char* name) {
  const char kind = a.dtype().kind();
  if (std::is_integral_v<T> && kind != 'i' && kind != 'u') {
    throw py::value_error(std::string(name) + " must be an integer array, got dtype " +
                          std::string(py::str(a.dtype())));
  }
  if (std::is_floating_point_v<T> && kind != 'f') {
    throw py::value_error(std::string(name) + " must be a float array, got dtype " +
                          std::string(py::str(a.dtype())));
  }
  auto c = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!c) throw py::value_error(std::string("cannot convert ") + name);
  return std::vector<T>(c.data(), c.data() + c.size());
}

d2a::HostBody host_body(const py::array& v_template, const py::array& shapedirs,
                        const py::array& j_template, const py::array& j_shapedirs,
                        const py::array& parents, const py::array& skin_indices,
                        const py::array& skin_weights) {
  d2a::HostBody h;
  const auto vt = check_shape(v_template, "v_template", {-1, 3}, "(V, 3)");
  const auto sd =
      check_shape(shapedirs, "shapedirs", {vt[0], 3, -1}, "(V, 3, S) with V of v_template");
  const auto jt = check_shape(j_template, "j_template", {-1, 3}, "(J, 3)");
  check_shape(j_shapedirs, "j_shapedirs", {jt[0], 3, sd[2]},
              "(J, 3, S) with J of j_template, S of shapedirs");
  check_shape(parents, "parents", {jt[0]}, "(J,) with J of j_template");
  const auto si =
      check_shape(skin_indices, "skin_indices", {vt[0], -1}, "(V, K) with V of v_template");
  check_shape(skin_weights, "skin_weights", {vt[0], si[1]}, "(V, K) like skin_indices");
  h.num_vertices = static_cast<int>(vt[0]);
  h.num_joints = static_cast<int>(jt[0]);
  h.num_betas = static_cast<int>(sd[2]);
  h.num_influences = static_cast<int>(si[1]);
  h.v_template = to_vector<float>(v_template, "v_template");
  h.shapedirs = to_vector<float>(shapedirs, "shapedirs");
  h.j_template = to_vector<float>(j_template, "j_template");
  h.j_shapedirs = to_vector<float>(j_shapedirs, "j_shapedirs");
  h.parents = to_vector<int64_t>(parents, "parents");
  h.skin_indices = to_vector<int64_t>(skin_indices, "skin_indices");
  h.skin_weights = to_vector<float>(skin_weights, "skin_weights");
  return h;
}

std::unique_ptr<d2a::BodyBuffers> make_buffers(
    const py::array& v_template, const py::array& shapedirs, const py::array& j_template,
    const py::array& j_shapedirs, const py::array& parents, const py::array& skin_indices,
    const py::array& skin_weights, const py::object& posedirs, const py::object& vertex_index,
    int max_batch, int device) {
  if (!posedirs.is_none()) {
    throw py::value_error("posedirs (SMPL pose correctives) are not supported by the CUDA LBS "
                          "kernel; use d2a_edge.body.lbs_torch.lbs or lbs_numpy.lbs for this body");
  }
  d2a::HostBody h = host_body(v_template, shapedirs, j_template, j_shapedirs, parents,
                              skin_indices, skin_weights);
  if (!vertex_index.is_none()) {
    const py::array index = py::array::ensure(vertex_index);
    if (!index) throw py::value_error("vertex_index must be an array of vertex indices");
    check_shape(index, "vertex_index", {-1}, "(N,)");
    h = d2a::select_vertices(h, to_vector<int64_t>(index, "vertex_index"));
  }
  return std::make_unique<d2a::BodyBuffers>(h, max_batch, device);
}

int device_count() {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the (non-sticky) error: "no GPU" is an answer here
    return 0;
  }
  D2A_CUDA_CHECK(status);
  return n;
}

}  // namespace

PYBIND11_MODULE(_lbs_cuda, m) {
  m.doc() = "CUDA linear blend skinning (twin of d2a_edge.body.lbs_torch.lbs, fp32, no posedirs)";
  m.attr("MAX_JOINTS") = d2a::kMaxJoints;
  m.attr("MAX_INFLUENCES") = d2a::kMaxInfluences;
  m.attr("MAX_BETAS") = d2a::kMaxBetas;
  m.def("device_count", &device_count, "Number of CUDA devices (0 without a GPU or driver).");
  m.def("peak_memory_bandwidth", &d2a::peak_memory_bandwidth, py::arg("device") = 0,
        "Peak DRAM bandwidth of `device` in bytes/s (2 x memory clock x bus width).");

  py::class_<d2a::BodyBuffers>(m, "BodyBuffers",
                               "A body asset's LBS arrays on one GPU plus scratch for max_batch "
                               "bodies; close() or use as a context manager.")
      .def(py::init(&make_buffers), py::kw_only(), py::arg("v_template"), py::arg("shapedirs"),
           py::arg("j_template"), py::arg("j_shapedirs"), py::arg("parents"),
           py::arg("skin_indices"), py::arg("skin_weights"), py::arg("posedirs") = py::none(),
           py::arg("vertex_index") = py::none(), py::arg("max_batch") = 256,
           py::arg("device") = -1,
           "Uploads the arrays of BodyAsset.lbs_arrays() (numpy) to `device` (-1: current). "
           "vertex_index (N,) ints: the output mesh resolution, only those vertices are skinned "
           "(verts (B, N, 3); e.g. BodyAsset.coarse_index); None: all V.")
      .def("lbs", &d2a::BodyBuffers::lbs, py::arg("rotmats"), py::arg("betas"),
           py::arg("transl"), py::arg("verts"), py::arg("joints"), py::arg("batch"),
           py::arg("stream") = 0, py::arg("skin") = "auto", py::arg("tiles_per_block") = 0,
           py::arg("warps") = 0,
           py::call_guard<py::gil_scoped_release>(),
           "Enqueue LBS on `stream` (cudaStream_t as int, 0 = default stream). Device pointers "
           "(int) to fp32 C-contiguous rotmats (B, J, 3, 3), betas (B, S), transl (B, 3) -> "
           "verts (B, V, 3), joints (B, J, 3); batch = B <= max_batch. Does not synchronize. "
           "skin: 'simt' (CUDA cores, any GPU), 'tc' (shape blend on TF32 tensor cores, 3xTF32; "
           "compute capability >= 8.0, S <= 32) or 'auto' (= 'simt' for now); "
           "tiles_per_block, warps: 'tc' only, 8-body tiles and warps per block (2, 4, 8, or 16 "
           "for S <= 16); 0 = chosen from the GPU / 8.")
      .def("close", &d2a::BodyBuffers::close, "Free the device memory (idempotent).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](d2a::BodyBuffers& self, py::args) { self.close(); })
      .def_property_readonly("closed", &d2a::BodyBuffers::closed)
      .def_property_readonly("device", &d2a::BodyBuffers::device)
      .def_property_readonly("max_batch", &d2a::BodyBuffers::max_batch)
      .def_property_readonly("num_vertices", &d2a::BodyBuffers::num_vertices)
      .def_property_readonly("num_joints", &d2a::BodyBuffers::num_joints)
      .def_property_readonly("num_betas", &d2a::BodyBuffers::num_betas)
      .def_property_readonly("device_bytes", &d2a::BodyBuffers::device_bytes)
      .def("__repr__", [](const d2a::BodyBuffers& b) {
        return "BodyBuffers(V=" + std::to_string(b.num_vertices()) +
               ", J=" + std::to_string(b.num_joints()) + ", S=" + std::to_string(b.num_betas()) +
               ", max_batch=" + std::to_string(b.max_batch()) + ", device=" +
               std::to_string(b.device()) + (b.closed() ? ", closed)" : ")");
      });
}
