// Allocator and thread-pool settings.
#include "common/runtime.h"

#include <dlfcn.h>
#include <malloc.h>
#include <torch/torch.h>

#include <cstdlib>
#include <thread>

namespace vadapt {

void configure_runtime(Workload w) {
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
  // Training and batched prefill allocate the same large activations (attention scores, logits:
  // tens of MB) again and again. Served by mmap they are fresh zero pages each time, and the page
  // faults cost most of a step on a VM (perf: 4.7 s -> 0.55 s per LLaVA step); from the heap they
  // are reused.
  mallopt(M_MMAP_MAX, 0);
  if (w == Workload::kInference) return;  // libtorch's defaults: f32 GEMMs run on OpenBLAS's own threads
  if (!std::getenv("OMP_NUM_THREADS")) {
    unsigned n = std::thread::hardware_concurrency();
    if (n > 0) torch::set_num_threads(static_cast<int>(n));
  }
  if (!std::getenv("OPENBLAS_NUM_THREADS")) {
    using SetThreads = void (*)(int);
    if (auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(1);
  }
}

}  // namespace vadapt
