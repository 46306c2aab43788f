// safetensors reader/writer: round trips, zero-copy, sharding, strict loading, and every kind
// of bad header named in the error.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "common/error.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/layers.h"
#include "model/load.h"

using namespace vadapt;
using vadapt::test::TempDir;

namespace {

std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> out(8 + header.size() + data_bytes, 0);
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

std::string parse_error(const std::string& header, size_t data_bytes) {
  try {
    io::SafeTensorsFile::from_buffer("mem.safetensors", make_file(header, data_bytes));
  } catch (const VadaptError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(SafeTensors, RoundTripIsBitwiseForEveryDtype) {
  TempDir tmp;
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({4}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 2, 2}).to(torch::kBFloat16)},
      {"i64", torch::arange(7, torch::kInt64)},
      {"i32", torch::arange(5, torch::kInt32)},
      {"u8", torch::arange(9, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::empty({0, 4})},
  };
  io::write_safetensors(tmp.file("a.safetensors"), tensors, {{"format", "pt"}});
  auto f = io::SafeTensorsFile::open(tmp.file("a.safetensors"));
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(vadapt::test::tensors_equal(f->tensor(name), t)) << name;
}

TEST(SafeTensors, AlignedTensorsAreZeroCopyViewsThatOutliveTheFileObject) {
  TempDir tmp;
  io::write_safetensors(tmp.file("a.safetensors"), {{"w", torch::arange(16, torch::kFloat32)}});
  torch::Tensor view;
  {
    auto f = io::SafeTensorsFile::open(tmp.file("a.safetensors"));
    view = f->tensor("w");
    auto again = f->tensor("w");
    EXPECT_EQ(view.data_ptr(), again.data_ptr());  // same mapped bytes, no copy
  }
  EXPECT_FLOAT_EQ(view[15].item<float>(), 15.0f);  // mapping kept alive by the view
}

TEST(SafeTensors, ShardedIndexLoadsAcrossFiles) {
  TempDir tmp;
  io::write_safetensors(tmp.file("model-00001-of-00002.safetensors"), {{"a", torch::ones({2})}});
  io::write_safetensors(tmp.file("model-00002-of-00002.safetensors"), {{"b", torch::zeros({3})}});
  io::write_text_atomic(tmp.file("model.safetensors.index.json"),
                        R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                           "b": "model-00002-of-00002.safetensors"}})");
  auto src = io::TensorSource::open(tmp.path());
  EXPECT_EQ(src.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(src.tensor("b").size(0), 3);
  io::write_text_atomic(tmp.file("model.safetensors.index.json"),
                        R"({"weight_map": {"a": "model-00002-of-00002.safetensors"}})");
  try {
    io::TensorSource::open(tmp.path());
    FAIL() << "expected an error";
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("does not hold this tensor"), std::string::npos) << e.what();
  }
}

TEST(SafeTensors, BadHeadersAreRejectedWithTheReason) {
  EXPECT_NE(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8).find("past the data section"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8).find("need 8"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})", 8).find("unknown dtype 'X9'"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 16)
                .find("overlap"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8).find("non-negative"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8).find("begin"), std::string::npos);
  EXPECT_NE(parse_error(R"([1,2,3])", 0).find("JSON object"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a": )", 0).find("not valid JSON"), std::string::npos);
  EXPECT_NE(parse_error(std::string(200, '[') + std::string(200, ']'), 0).find("nested"), std::string::npos);
  EXPECT_NE(parse_error(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8)
                .find("too large"), std::string::npos);
  EXPECT_NE(parse_error(R"({"__metadata__":{"k":1}})", 0).find("strings"), std::string::npos);
  // Header length larger than the file, and a huge header length.
  auto bytes = make_file("{}", 0);
  uint64_t huge = 1ull << 40;
  std::memcpy(bytes.data(), &huge, 8);
  EXPECT_THROW(io::SafeTensorsFile::from_buffer("huge", bytes), VadaptError);
  EXPECT_THROW(io::SafeTensorsFile::from_buffer("short", {1, 2, 3}), VadaptError);
  // The error names the file and the tensor.
  std::string e = parse_error(R"({"layer.0.w":{"dtype":"F32","shape":[2],"data_offsets":[0,99]}})", 8);
  EXPECT_NE(e.find("mem.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("layer.0.w"), std::string::npos) << e;
}

TEST(SafeTensors, MissingFileAndDirectoryErrorsNameThePath) {
  try {
    io::SafeTensorsFile::open("/nonexistent/x.safetensors");
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors"), std::string::npos);
  }
  TempDir tmp;
  EXPECT_THROW(io::TensorSource::open(tmp.path()), VadaptError);
}

TEST(SafeTensors, RandomMutationsNeverCrash) {
  // A randomized fuzz of the header parser: every mutated file either parses or throws
  // VadaptError. (The ASan/UBSan build of this test is the fuzz_parsers target.)
  std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})";
  auto base = make_file(header, 24);
  std::mt19937 rng(1234);
  int parsed = 0, rejected = 0;
  for (int it = 0; it < 3000; ++it) {
    auto bytes = base;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t pos = rng() % bytes.size();
      switch (rng() % 4) {
        case 0: bytes[pos] = static_cast<uint8_t>(rng()); break;
        case 1: bytes.resize(pos); break;
        case 2: bytes.insert(bytes.begin() + static_cast<long>(pos), static_cast<uint8_t>("{}[]\",:0123456789"[rng() % 17])); break;
        default: if (pos < 8) bytes[pos] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
      }
      if (bytes.empty()) break;
    }
    try {
      auto f = io::SafeTensorsFile::from_buffer("fuzz", bytes);
      for (const auto& t : f->tensors()) (void)f->tensor(t.name).sum();
      ++parsed;
    } catch (const VadaptError&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed + rejected, 2999);
}

TEST(StrictLoad, ReportsMissingUnexpectedAndMismatchedTogether) {
  TempDir tmp;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  model::Projection p(4, 3, true, opts);
  io::write_safetensors(tmp.file("m.safetensors"),
                        {{"weight", torch::zeros({3, 5})}, {"extra.weight", torch::zeros({1})}});
  try {
    model::load_strict(*p, io::TensorSource::open(tmp.file("m.safetensors")));
    FAIL() << "expected an error";
  } catch (const VadaptError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("missing tensors (1)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected tensors (1)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("extra.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("shape [3, 5] in file, expected [3, 4]"), std::string::npos) << msg;
  }
  io::write_safetensors(tmp.file("i.safetensors"), {{"weight", torch::zeros({3, 4}, torch::kInt64)}, {"bias", torch::zeros({3})}});
  try {
    model::load_strict(*p, io::TensorSource::open(tmp.file("i.safetensors")));
    FAIL() << "expected an error";
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("dtype I64 in file"), std::string::npos) << e.what();
  }
}

TEST(AtomicWrite, FailedWriteLeavesTheOldFileIntact) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("c.json"), "old");
  EXPECT_THROW(io::write_file_atomic(tmp.file("c.json"), [](int) { throw VadaptError("boom"); }), VadaptError);
  EXPECT_EQ(io::read_text_file(tmp.file("c.json")), "old");
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(tmp.path())) (void)e, ++n;
  EXPECT_EQ(n, 1);  // no temp file left behind
}

// ---- PyTorch .bin (torch.save zip) files ----

#include <caffe2/serialize/inline_container.h>

#include "io/torch_bin.h"

namespace {
// A torch.save-style zip archive whose data.pkl is `pickle_bytes` (no tensors).
std::vector<char> zip_with_pickle(const std::string& pickle_bytes) {
  std::vector<char> out;
  {
    caffe2::serialize::PyTorchStreamWriter w([&](const void* buf, size_t n) {
      out.insert(out.end(), static_cast<const char*>(buf), static_cast<const char*>(buf) + n);
      return n;
    });
    w.writeRecord("data.pkl", pickle_bytes.data(), pickle_bytes.size());
    w.writeEndOfFile();
  }
  return out;
}

std::string bin_error(const std::vector<char>& bytes) {
  try {
    io::read_torch_bin_bytes("mem.bin", bytes);
  } catch (const VadaptError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(TorchBin, RoundTripIsBitwiseAndKeepsOrderAndDtypes) {
  TempDir tmp;
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> t = {{"model.mm_projector.2.weight", torch::randn({3, 4})},
                                                          {"model.mm_projector.0.weight", torch::randn({4, 5}).to(torch::kBFloat16)},
                                                          {"half", torch::randn({2}).to(torch::kFloat16)},
                                                          {"ids", torch::arange(5, torch::kInt64)},
                                                          {"view", torch::randn({4, 6}).narrow(1, 1, 3)}};
  io::write_torch_bin(tmp.file("w.bin"), t);
  auto back = io::read_torch_bin(tmp.file("w.bin"));
  ASSERT_EQ(back.size(), t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(back[i].first, t[i].first);
    EXPECT_EQ(back[i].second.scalar_type(), t[i].second.scalar_type());
    EXPECT_TRUE(torch::equal(back[i].second, t[i].second)) << t[i].first;
  }
  // Through TensorSource (a .bin file, and a folder with pytorch_model.bin), as safetensors are.
  auto src = io::TensorSource::open(tmp.file("w.bin"));
  EXPECT_TRUE(torch::equal(src.tensor("half"), t[2].second));
  std::filesystem::create_directories(tmp.file("m"));
  io::write_torch_bin(tmp.file("m/pytorch_model.bin"), t);
  EXPECT_TRUE(torch::equal(io::TensorSource::open(tmp.file("m")).tensor("ids"), t[3].second));
}

TEST(TorchBin, HostileAndBrokenFilesGetAClearErrorAndRunNothing) {
  TempDir tmp;
  // A pickle that would call os.system("touch <tmp>/pwned") under Python's pickle.
  const std::string cmd = "touch " + tmp.file("pwned");
  std::string pk = "\x80\x02" "cposix\nsystem\n" "X";
  const uint32_t n = static_cast<uint32_t>(cmd.size());
  pk.append(reinterpret_cast<const char*>(&n), 4);
  pk += cmd + "\x85" "R.";
  std::string m = bin_error(zip_with_pickle(pk));
  EXPECT_NE(m.find("mem.bin"), std::string::npos) << m;
  EXPECT_NE(m.find("cannot read it as a torch.save state dict"), std::string::npos) << m;
  EXPECT_FALSE(std::filesystem::exists(tmp.file("pwned")));
  // The pre-1.6 (non-zip) format, and a plain pickle of an int.
  m = bin_error(std::vector<char>(pk.begin(), pk.end()));
  EXPECT_NE(m.find("not a zip archive"), std::string::npos) << m;
  m = bin_error(zip_with_pickle(std::string("\x80\x02K\x07.", 5)));
  EXPECT_NE(m.find("expected a mapping of names to tensors"), std::string::npos) << m;
  // A dict with a non-tensor value.
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("w", c10::IValue(torch::ones({2})));
  d.insert("step", c10::IValue(int64_t{3}));
  m = bin_error(torch::pickle_save(c10::IValue(d)));
  EXPECT_NE(m.find("step"), std::string::npos) << m;
  EXPECT_NE(m.find("expected a tensor"), std::string::npos) << m;
  // Truncated and bit-flipped copies of a valid file: an error or a valid result, never a crash.
  io::write_torch_bin(tmp.file("ok.bin"), {{"a", torch::randn({16, 16})}, {"b", torch::randn({8})}});
  std::ifstream in(tmp.file("ok.bin"), std::ios::binary);
  std::vector<char> good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  m = bin_error(std::vector<char>(good.begin(), good.begin() + static_cast<long>(good.size() / 2)));
  EXPECT_NE(m.find("mem.bin"), std::string::npos) << m;
  std::mt19937 rng(1);
  for (int i = 0; i < 100; ++i) {
    auto bad = good;
    for (int k = 0; k < 4; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    if (rng() % 2) bad.resize(rng() % bad.size());
    try {
      io::read_torch_bin_bytes("mem.bin", bad);
    } catch (const VadaptError&) {
    }
  }
}
