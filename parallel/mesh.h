// Mesh: the world cut into the process groups of 5-D parallelism, tp x cp x ep x dp x pp.
//
// Rank order (tensor-parallel ranks adjacent, pipeline stages furthest apart):
//
//   world rank = tp_rank + tp * (cp_rank + cp * (ep_rank + ep * (dp_rank + dp * pp_rank)))
//
// Tensor parallelism communicates in every layer, so its ranks are neighbours (on one node
// when the launcher fills nodes in rank order, as Open MPI does); pipeline stages exchange
// one activation per micro-batch, so they can be the furthest apart.
//
// Each rank belongs to one group per dimension: the ranks that differ from it only in that
// coordinate, ordered by it (a rank's coordinate is its rank in that group). The groups are
// explicit objects passed to the layers that need them: there is no global mesh.
//
//   parallel::Mesh mesh(world.communicator, parallel::MeshShape().tp(2).dp(2));
//   parallel::ColumnParallelLinear fc(d, 4 * d, mesh.tp_group());
//   parallel::DistributedDataParallel ddp(model, mesh.dp_group());
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/transformer_config.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

// The five sizes, in rank order from fastest- to slowest-varying.
enum class MeshDim { tp = 0, cp = 1, ep = 2, dp = 3, pp = 4 };
inline constexpr int kMeshDims = 5;
const char* mesh_dim_name(MeshDim dim);

class MeshShape {
 public:
  MeshShape& tp(int value) { return set(MeshDim::tp, value); }
  MeshShape& cp(int value) { return set(MeshDim::cp, value); }
  MeshShape& ep(int value) { return set(MeshDim::ep, value); }
  MeshShape& dp(int value) { return set(MeshDim::dp, value); }
  MeshShape& pp(int value) { return set(MeshDim::pp, value); }
  int size(MeshDim dim) const { return sizes_[static_cast<int>(dim)]; }
  int64_t product() const;
  // "tp 2 x cp 1 x ep 1 x dp 2 x pp 1", how messages name a layout.
  std::string describe() const;

  // Throws unless every size is positive and their product is world_size.
  void check_world(int world_size) const;
  // Throws unless the model fits the layout: attention heads (and KV heads) divisible by tp,
  // the sequence length by 2 cp (context parallelism cuts it into 2 cp chunks so that causal
  // work balances), and at least one layer per pipeline stage.
  void check_model(const nn::TransformerConfig& config, int64_t sequence_length) const;

 private:
  MeshShape& set(MeshDim dim, int value) {
    sizes_[static_cast<int>(dim)] = value;
    return *this;
  }
  std::array<int, kMeshDims> sizes_{1, 1, 1, 1, 1};
};

class Mesh {
 public:
  // Collective over `world`: checks the shape against the world size, then splits the world
  // into one group per dimension (every rank makes all five, groups of one included).
  Mesh(std::shared_ptr<Communicator> world, MeshShape shape);

  const MeshShape& shape() const { return shape_; }
  int size(MeshDim dim) const { return shape_.size(dim); }
  // This rank's coordinate along `dim` (its rank in group(dim)).
  int coordinate(MeshDim dim) const { return coordinates_[static_cast<int>(dim)]; }
  const std::shared_ptr<Communicator>& group(MeshDim dim) const { return groups_[static_cast<int>(dim)]; }
  const std::shared_ptr<Communicator>& world() const { return world_; }
  // Collective over the world: a new group of the ranks that differ from this one only along
  // `dims` (ordered by those coordinates, the first of dims fastest). Gradients of a parameter
  // replicated along several dims are averaged over such a group: dp x cp x ep for dense
  // parameters, dp x cp for experts.
  std::shared_ptr<Communicator> group_over(const std::vector<MeshDim>& dims) const;
  // The world rank at the given coordinates (tp, cp, ep, dp, pp).
  int world_rank_at(const std::array<int, kMeshDims>& coordinates) const;

  const std::shared_ptr<Communicator>& tp_group() const { return group(MeshDim::tp); }
  const std::shared_ptr<Communicator>& cp_group() const { return group(MeshDim::cp); }
  const std::shared_ptr<Communicator>& ep_group() const { return group(MeshDim::ep); }
  const std::shared_ptr<Communicator>& dp_group() const { return group(MeshDim::dp); }
  const std::shared_ptr<Communicator>& pp_group() const { return group(MeshDim::pp); }
  int tp_rank() const { return coordinate(MeshDim::tp); }
  int cp_rank() const { return coordinate(MeshDim::cp); }
  int ep_rank() const { return coordinate(MeshDim::ep); }
  int dp_rank() const { return coordinate(MeshDim::dp); }
  int pp_rank() const { return coordinate(MeshDim::pp); }

 private:
  std::shared_ptr<Communicator> world_;
  MeshShape shape_;
  std::array<int, kMeshDims> coordinates_{};
  std::array<std::shared_ptr<Communicator>, kMeshDims> groups_;
};

}  // namespace kiln::parallel
