// Mesh: layout checks and the split of the world into one group per dimension (see mesh.h).
#include "parallel/mesh.h"

#include <sstream>

#include "kernels/error.h"

namespace kiln::parallel {

const char* mesh_dim_name(MeshDim dim) {
  static constexpr const char* kNames[kMeshDims] = {"tp", "cp", "ep", "dp", "pp"};
  return kNames[static_cast<int>(dim)];
}

int64_t MeshShape::product() const {
  int64_t product = 1;
  for (int size : sizes_) product *= size;
  return product;
}

std::string MeshShape::describe() const {
  std::ostringstream out;
  for (int d = 0; d < kMeshDims; ++d) out << (d ? " x " : "") << mesh_dim_name(static_cast<MeshDim>(d)) << ' ' << sizes_[d];
  return out.str();
}

void MeshShape::check_world(int world_size) const {
  for (int d = 0; d < kMeshDims; ++d) {
    KILN_CHECK(sizes_[d] >= 1, "Mesh: ", mesh_dim_name(static_cast<MeshDim>(d)), " must be at least 1, got ", sizes_[d],
               " (", describe(), ")");
  }
  KILN_CHECK(product() == world_size, "Mesh: ", describe(), " = ", product(), " ranks, but the world has ", world_size);
}

void MeshShape::check_model(const nn::TransformerConfig& config, int64_t sequence_length) const {
  const int tp = size(MeshDim::tp), cp = size(MeshDim::cp), pp = size(MeshDim::pp);
  const int64_t kv_heads = config.n_kv_heads == 0 ? config.n_heads : config.n_kv_heads;
  KILN_CHECK(config.n_heads % tp == 0, "Mesh: n_heads ", config.n_heads, " is not divisible by tp ", tp,
             " (each tensor-parallel rank computes n_heads / tp heads)");
  KILN_CHECK(kv_heads % tp == 0, "Mesh: n_kv_heads ", kv_heads, " is not divisible by tp ", tp,
             " (each tensor-parallel rank keeps n_kv_heads / tp key/value heads)");
  KILN_CHECK(sequence_length % (2 * cp) == 0, "Mesh: sequence length ", sequence_length, " is not divisible by 2 x cp = ",
             2 * cp, " (context parallelism cuts the sequence into 2 cp chunks)");
  KILN_CHECK(config.n_layers >= pp, "Mesh: ", config.n_layers, " layers are fewer than pp ", pp,
             " pipeline stages (every stage needs at least one layer)");
}

Mesh::Mesh(std::shared_ptr<Communicator> world, MeshShape shape) : world_(std::move(world)), shape_(shape) {
  KILN_CHECK(world_ != nullptr, "Mesh: the world communicator is null");
  shape_.check_world(world_->size());
  // Coordinates from the rank: tp varies fastest (see the rank order in mesh.h).
  int rest = world_->rank();
  for (int d = 0; d < kMeshDims; ++d) {
    coordinates_[d] = rest % shape_.size(static_cast<MeshDim>(d));
    rest /= shape_.size(static_cast<MeshDim>(d));
  }
  // The group along dim d holds the ranks that share every other coordinate: the color is this
  // rank's world rank with coordinate d set to 0, the key its coordinate d. Every rank makes the
  // five splits in the same order, as collectives over the world must.
  for (int d = 0; d < kMeshDims; ++d) {
    std::array<int, kMeshDims> others = coordinates_;
    others[d] = 0;
    const int color = world_rank_at(others);
    const std::string name = std::string(mesh_dim_name(static_cast<MeshDim>(d))) + "." + std::to_string(color);
    groups_[d] = world_->split(color, coordinates_[d], name);
  }
}

std::shared_ptr<Communicator> Mesh::group_over(const std::vector<MeshDim>& dims) const {
  std::array<int, kMeshDims> others = coordinates_;
  std::array<bool, kMeshDims> seen{};
  int key = 0, stride = 1;
  std::string name;
  for (MeshDim dim : dims) {
    const int d = static_cast<int>(dim);
    KILN_CHECK(!seen[d], "Mesh::group_over: ", mesh_dim_name(dim), " is listed twice");
    seen[d] = true;
    key += stride * coordinates_[d];
    stride *= shape_.size(dim);
    others[d] = 0;
    if (!name.empty()) name += 'x';
    name += mesh_dim_name(dim);
  }
  const int color = world_rank_at(others);
  return world_->split(color, key, name + "." + std::to_string(color));
}

int Mesh::world_rank_at(const std::array<int, kMeshDims>& coordinates) const {
  int rank = 0;
  for (int d = kMeshDims - 1; d >= 0; --d) {
    const int size = shape_.size(static_cast<MeshDim>(d));
    KILN_CHECK(coordinates[d] >= 0 && coordinates[d] < size, "Mesh: ", mesh_dim_name(static_cast<MeshDim>(d)),
               " coordinate ", coordinates[d], " is out of range for size ", size);
    rank = rank * size + coordinates[d];
  }
  return rank;
}

}  // namespace kiln::parallel
