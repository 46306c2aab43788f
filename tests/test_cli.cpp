// The vadapt binary end to end on tiny fixtures: stdout carries only results, errors exit
// non-zero with a message naming the problem.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "fixtures.h"

using vadapt::test::TempDir;

namespace {
struct Run {
  int rc;
  std::string out, err;
};
Run run_cli(const std::string& args) {
  TempDir tmp;
  std::string cmd = std::string(VADAPT_BINARY) + " " + args + " 2>" + tmp.file("err");
  Run r{};
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  FILE* e = fopen(tmp.file("err").c_str(), "r");
  while ((n = fread(buf.data(), 1, buf.size(), e)) > 0) r.err.append(buf.data(), n);
  fclose(e);
  return r;
}
}  // namespace

TEST(Cli, GenerateStreamsOnlyTheContinuationToStdout) {
  TempDir model;
  vadapt::test::write_tiny_llama(model.path(), vadapt::test::tiny_llama_config());
  auto r = run_cli("generate --model " + model.path() + " --prompt 'in the' --max-new-tokens 5 --temperature 0");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.find("[vadapt]"), std::string::npos) << "logs leaked into stdout";
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  auto again = run_cli("generate --model " + model.path() + " --prompt 'in the' --max-new-tokens 5");
  EXPECT_EQ(again.out, r.out);
}

TEST(Cli, BadInputsExitNonZeroWithAClearMessage) {
  auto r = run_cli("generate --model /nonexistent/model --prompt hi");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  TempDir model;
  vadapt::test::write_tiny_llama(model.path(), vadapt::test::tiny_llama_config());
  r = run_cli("generate --model " + model.path() + " --prompt '' --no-bos");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
  r = run_cli("generate --model " + model.path() + " --prompt hi --dtype float8");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("float8"), std::string::npos) << r.err;
  r = run_cli("frobnicate");
  EXPECT_NE(r.rc, 0);
}

TEST(Cli, InspectPrintsJsonWithParameterCounts) {
  TempDir model;
  vadapt::test::write_tiny_llama(model.path(), vadapt::test::tiny_llama_config());
  auto r = run_cli("inspect " + model.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["parameters"].get<int64_t>(), vadapt::test::tiny_llama_config().parameter_count());
  EXPECT_EQ(j["kind"], "llama");
}
