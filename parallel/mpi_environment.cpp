// MPI start-up and shut-down, and the mapping of kiln dtypes and reductions onto MPI's.
//
// MPI has no bf16 or f16 type, so each gets a 2-byte contiguous datatype of its own and
// user-defined sum and max operations that convert through float (the same rounding as
// kiln's CPU kernels). They are created once at initialize() and freed at finalize().
#include <algorithm>

#include "parallel/mpi_backend.h"
#include "parallel/mpi_detail.h"

namespace kiln::parallel::mpi {
namespace {

MPI_Datatype bf16_type = MPI_DATATYPE_NULL;
MPI_Datatype f16_type = MPI_DATATYPE_NULL;
MPI_Op half_sum = MPI_OP_NULL;
MPI_Op half_max = MPI_OP_NULL;

template <typename Half, typename Combine>
void combine_half(const void* in, void* inout, int length, Combine combine) {
  const Half* a = static_cast<const Half*>(in);
  Half* b = static_cast<Half*>(inout);
  for (int i = 0; i < length; ++i) b[i] = Half(combine(float(a[i]), float(b[i])));
}

// MPI_User_function: inout[i] = in[i] (op) inout[i], dispatched on which half type it is.
template <typename Combine>
void reduce_half(void* in, void* inout, int* length, MPI_Datatype* type, Combine combine) {
  if (*type == bf16_type) {
    combine_half<bf16>(in, inout, *length, combine);
  } else {
    combine_half<f16>(in, inout, *length, combine);
  }
}

void sum_half(void* in, void* inout, int* length, MPI_Datatype* type) {
  reduce_half(in, inout, length, type, [](float a, float b) { return a + b; });
}

void max_half(void* in, void* inout, int* length, MPI_Datatype* type) {
  reduce_half(in, inout, length, type, [](float a, float b) { return std::max(a, b); });
}

MPI_Datatype make_half_type() {
  MPI_Datatype type;
  check(MPI_Type_contiguous(2, MPI_BYTE, &type), "MPI_Type_contiguous");
  check(MPI_Type_commit(&type), "MPI_Type_commit");
  return type;
}

}  // namespace

MPI_Datatype datatype(DType dtype) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::bf16: return bf16_type;
    case DType::f16: return f16_type;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::boolean: return MPI_UINT8_T;
  }
  KILN_FAIL("mpi: unknown dtype");
}

MPI_Op reduction(ReduceOp op, DType dtype) {
  bool half = dtype == DType::bf16 || dtype == DType::f16;
  if (op == ReduceOp::max) return half ? half_max : MPI_MAX;
  return half ? half_sum : MPI_SUM;
}

void check(int code, const std::string& context) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  KILN_FAIL(context, ": MPI error: ", std::string(text, static_cast<size_t>(length)));
}

Placement initialize() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  KILN_CHECK(!initialized, "parallel::init: MPI is already initialized (init may be called once per process)");
  int provided = 0;
  // Errors of MPI_Init itself are fatal under MPI's default handler; nothing to check here.
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    KILN_FAIL("parallel::init: this MPI library does not provide MPI_THREAD_MULTIPLE (level ", provided,
              "), which kiln's communication threads need; use an MPI built with thread support");
  }
  Placement placement;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &placement.world_rank), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &placement.world_size), "MPI_Comm_size");
  MPI_Comm node;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, placement.world_rank, MPI_INFO_NULL, &node),
        "MPI_Comm_split_type");
  check(MPI_Comm_rank(node, &placement.local_rank), "MPI_Comm_rank");
  check(MPI_Comm_size(node, &placement.local_size), "MPI_Comm_size");
  check(MPI_Comm_free(&node), "MPI_Comm_free");

  bf16_type = make_half_type();
  f16_type = make_half_type();
  check(MPI_Op_create(&sum_half, 1, &half_sum), "MPI_Op_create");
  check(MPI_Op_create(&max_half, 1, &half_max), "MPI_Op_create");
  return placement;
}

std::shared_ptr<Communicator> world_communicator(int world_rank, std::chrono::milliseconds timeout) {
  MPI_Comm comm;
  check(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
  return make_communicator(comm, world_rank, "world", timeout);
}

void finalize() {
  shut_down_communicators();
  MPI_Op_free(&half_sum);
  MPI_Op_free(&half_max);
  MPI_Type_free(&bf16_type);
  MPI_Type_free(&f16_type);
  check(MPI_Finalize(), "parallel::finalize: MPI_Finalize");
}

}  // namespace kiln::parallel::mpi
