// Data-parallel training on libtorch's c10d: a process group over TCPStore + Gloo (CPU; CUDA
// gradients are staged through host memory), configured like torchrun from the environment
// (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; optional GLOO_SOCKET_IFNAME and
// VADAPT_DIST_TIMEOUT seconds), and a local launcher behind `vadapt train --nproc N`.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace vadapt::train {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In-place sum over all ranks (tensors may live on any device; one collective for the list).
  virtual void allreduce_sum(const std::vector<torch::Tensor>& tensors) = 0;
  virtual void barrier() = 0;
};

// The process group described by the environment; nullptr when WORLD_SIZE is unset or 1.
// Errors name the variable that is missing or malformed.
std::shared_ptr<Communicator> communicator_from_env();

// Whether this libtorch build has the c10d Gloo backend (headers found at configure time).
bool distributed_available();

// Runs `argv` (argv[0] is replaced by this executable) as `nproc` local workers with RANK,
// LOCAL_RANK, WORLD_SIZE, MASTER_ADDR (default 127.0.0.1) and MASTER_PORT (default: a free
// port) set; waits for all, and stops the others as soon as one fails or on SIGINT / SIGTERM.
// Returns the first non-zero exit status, or 0.
int launch_local_workers(int nproc, const std::vector<std::string>& argv);

}  // namespace vadapt::train
