// qcompiler-run: run a qcompiler artifact (model.so + manifest.json from CompiledModule.export)
// without Python. Checks the manifest (format, signature, sha256 checksums, architecture, CPU
// features) before loading the library, checks each .npy input's dtype and shape against the
// manifest, runs the Relax VM's "main", and writes each output as <output-dir>/<name>.npy.
//
// Inputs are exactly what the compiled function takes: the manifest's `dtype` arrays. For a
// model that starts with a QuantStub that is the float32 input (the quantize step is compiled
// into the model); for a quantized input it is the integer storage (torch's int_repr()).
//
// Exit codes: 0 ok, 1 artifact error, 2 usage error, 3 input error, 4 error while running.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "artifact.h"
#include "errors.h"
#include "npy.h"

#ifndef QCOMPILER_RUN_TVM_VERSION
#define QCOMPILER_RUN_TVM_VERSION ""
#endif

namespace ffi = tvm::ffi;

namespace qcrun {
namespace {

constexpr int kArtifactError = 1, kUsageError = 2, kInputError = 3, kRunError = 4;

const char kUsage[] =
    "usage: qcompiler-run ARTIFACT [--input X.npy]... [--output-dir DIR] [--threads N]\n"
    "                     [--bench N] [--info] [--skip-host-check] [--quiet]\n"
    "\n"
    "Run a qcompiler artifact (the directory CompiledModule.export / `qcompiler compile` wrote)\n"
    "on .npy inputs and write each output to DIR/<name>.npy.\n"
    "\n"
    "  ARTIFACT            artifact directory (or its manifest.json)\n"
    "  -i, --input X.npy   one per model input, in order; each must have exactly the manifest's\n"
    "                      dtype and shape (float32 for a model that quantizes its input itself,\n"
    "                      the integer storage for a quantized input); see --info\n"
    "  -o, --output-dir D  where to write <output name>.npy (default: .)\n"
    "  -t, --threads N     TVM thread-pool size (default: $TVM_NUM_THREADS, else all usable CPUs)\n"
    "  --bench N           also time N runs after a warm-up and print median/min/mean latency\n"
    "                      (without --input: zero-filled inputs)\n"
    "  --info              print the artifact's target and signature, then exit\n"
    "  --skip-host-check   do not refuse an artifact whose CPU features this machine lacks\n"
    "  -q, --quiet         print nothing but errors (and --bench results)\n"
    "  -h, --help          this text\n"
    "\n"
    "Exit codes: 0 ok, 1 artifact error (missing file, bad checksum or manifest, wrong CPU),\n"
    "2 usage error, 3 input error (missing/unreadable .npy, wrong dtype or shape), 4 run error.\n";

struct Options {
  std::string artifact;
  std::vector<std::string> inputs;
  std::string output_dir = ".";
  int threads = 0;
  int bench = 0;
  bool info = false;
  bool check_host = true;
  bool quiet = false;
};

int ParsePositive(const std::string& flag, const char* value) {
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  if (*value == '\0' || *end != '\0' || v < 1 || v > 1000000000) {
    throw RunnerError(flag + " needs a positive integer, got '" + value + "'", kUsageError);
  }
  return static_cast<int>(v);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw RunnerError(a + " needs a value", kUsageError);
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "-i" || a == "--input") {
      o.inputs.push_back(value());
    } else if (a == "-o" || a == "--output-dir") {
      o.output_dir = value();
    } else if (a == "-t" || a == "--threads") {
      o.threads = ParsePositive(a, value());
    } else if (a == "--bench") {
      o.bench = ParsePositive(a, value());
    } else if (a == "--info") {
      o.info = true;
    } else if (a == "--skip-host-check") {
      o.check_host = false;
    } else if (a == "-q" || a == "--quiet") {
      o.quiet = true;
    } else if (!a.empty() && a[0] == '-') {
      throw RunnerError("unknown option " + a, kUsageError);
    } else if (o.artifact.empty()) {
      o.artifact = a;
    } else {
      throw RunnerError("unexpected argument '" + a + "' (give inputs with --input)", kUsageError);
    }
  }
  if (o.artifact.empty()) throw RunnerError("missing ARTIFACT", kUsageError);
  return o;
}

// TVM fixes its pool size on first use from TVM_NUM_THREADS and otherwise uses half the
// hardware threads on x86; like qcompiler.runtime, default to every CPU we may run on.
void ConfigureThreads(int threads) {
  if (threads > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
    return;
  }
  cpu_set_t set;
  int n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  setenv("TVM_NUM_THREADS", std::to_string(std::max(n, 1)).c_str(), 0);
}

DLDataType ToDLDataType(const std::string& dtype) {
  if (dtype == "uint8") return {kDLUInt, 8, 1};
  if (dtype == "int8") return {kDLInt, 8, 1};
  if (dtype == "int32") return {kDLInt, 32, 1};
  if (dtype == "int64") return {kDLInt, 64, 1};
  if (dtype == "float32") return {kDLFloat, 32, 1};
  if (dtype == "bool") return {kDLBool, 8, 1};
  throw RunnerError("unsupported dtype " + dtype, kArtifactError);
}

std::string FromDLDataType(DLDataType t) {
  if (t.lanes != 1) return "vector";
  if (t.code == kDLUInt && t.bits == 8) return "uint8";
  if (t.code == kDLInt && t.bits == 8) return "int8";
  if (t.code == kDLInt && t.bits == 32) return "int32";
  if (t.code == kDLInt && t.bits == 64) return "int64";
  if (t.code == kDLFloat && t.bits == 32) return "float32";
  if ((t.code == kDLBool && t.bits == 8) || (t.code == kDLUInt && t.bits == 1)) return "bool";
  return "dtype(code=" + std::to_string(t.code) + ", bits=" + std::to_string(t.bits) + ")";
}

std::string DtypeHint(const IOSpec& io) {
  if (!io.qdtype.empty()) {
    return " (the quantized " + io.qdtype + " storage, " + io.qparams + ": save " +
           "t.int_repr().numpy() of the torch tensor)";
  }
  if (io.torch_input == "float") return " (the float input the model quantizes itself)";
  return "";
}

NpyArray CheckInput(const NpyArray& a, const IOSpec& io, const std::string& path) {
  if (a.dtype != io.dtype) {
    throw RunnerError("input '" + io.name + "' (" + path + "): expected dtype " + io.dtype +
                          ", got " + a.dtype + DtypeHint(io),
                      kInputError);
  }
  if (a.shape != io.shape) {
    throw RunnerError("input '" + io.name + "' (" + path + "): expected shape " +
                          ShapeStr(io.shape) + ", got " + ShapeStr(a.shape),
                      kInputError);
  }
  return a;
}

std::vector<NpyArray> ReadInputs(const Options& o, const Artifact& art) {
  std::vector<NpyArray> arrays;
  if (o.inputs.empty() && o.bench > 0) {
    for (const auto& io : art.inputs) {
      size_t n = static_cast<size_t>(NumElements(io.shape)) * DtypeItemSize(io.dtype);
      arrays.push_back(NpyArray{io.dtype, io.shape, std::vector<char>(n, 0)});
    }
    return arrays;
  }
  if (o.inputs.size() != art.inputs.size()) {
    std::string sig;
    for (const auto& io : art.inputs) sig += (sig.empty() ? "" : ", ") + io.Describe();
    throw RunnerError("the model takes " + std::to_string(art.inputs.size()) + " input(s) (" +
                          sig + ") but " + std::to_string(o.inputs.size()) +
                          " --input file(s) were given",
                      kInputError);
  }
  for (size_t i = 0; i < o.inputs.size(); ++i) {
    arrays.push_back(CheckInput(ReadNpy(o.inputs[i]), art.inputs[i], o.inputs[i]));
  }
  return arrays;
}

// Allocator protocol of ffi::Tensor::FromNDAlloc: 64-byte aligned, like TVM's own.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ToTensor(const NpyArray& a) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(a.shape),
                                           ToDLDataType(a.dtype), DLDevice{kDLCPU, 0});
  if (!a.data.empty()) std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

std::vector<NpyArray> CollectOutputs(const ffi::Any& result, const Artifact& art) {
  std::vector<ffi::Tensor> values;
  if (auto t = result.as<ffi::Tensor>()) {
    values.push_back(*t);
  } else if (auto arr = result.as<ffi::Array<ffi::Any>>()) {
    for (const auto& v : *arr) {
      auto tv = v.as<ffi::Tensor>();
      if (!tv.has_value()) {
        throw RunnerError("the compiled function returned a " + v.GetTypeKey() +
                              " inside its result tuple, not a tensor",
                          kRunError);
      }
      values.push_back(*tv);
    }
  } else {
    throw RunnerError("the compiled function returned a " + result.GetTypeKey() +
                          ", not a tensor or a tuple of tensors",
                      kRunError);
  }
  if (values.size() != art.outputs.size()) {
    throw RunnerError("the compiled function returned " + std::to_string(values.size()) +
                          " value(s) but the manifest lists " +
                          std::to_string(art.outputs.size()) +
                          " output(s): the manifest does not belong to this library",
                      kArtifactError);
  }
  std::vector<NpyArray> out;
  for (size_t i = 0; i < values.size(); ++i) {
    const ffi::Tensor& t = values[i];
    const IOSpec& io = art.outputs[i];
    NpyArray a;
    a.dtype = FromDLDataType(t.dtype());
    for (int d = 0; d < t.ndim(); ++d) a.shape.push_back(t.shape()[d]);
    if (a.dtype != io.dtype || a.shape != io.shape) {
      throw RunnerError("output '" + io.name + "': the compiled function returned " + a.dtype +
                            ShapeStr(a.shape) + " but the manifest says " + io.dtype +
                            ShapeStr(io.shape),
                        kArtifactError);
    }
    if (!t.IsContiguous()) {
      throw RunnerError("output '" + io.name + "' is not a contiguous tensor", kRunError);
    }
    const DLTensor* dl = t.GetDLTensorPtr();
    const char* p = static_cast<const char*>(dl->data) + dl->byte_offset;
    a.data.assign(p, p + ffi::GetDataSize(*dl));
    out.push_back(std::move(a));
  }
  return out;
}

std::string SafeFileName(std::string name) {
  for (char& c : name) {
    if (c == '/' || c == '\\' || c == '\0') c = '_';
  }
  return name == "." || name == ".." ? "_" + name : name;
}

// mkdir -p; failures show up as "cannot write output file" below.
void MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos == dir.size() || dir[pos] == '/') ::mkdir(dir.substr(0, pos).c_str(), 0777);
  }
}

void Bench(ffi::Function& main_fn, const std::vector<ffi::Any>& args, int runs) {
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any ignored;
  main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &ignored);  // warm-up
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    ffi::Any r;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &r);
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  double mean = 0;
  for (double v : ms) mean += v / runs;
  std::sort(ms.begin(), ms.end());
  double median = runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
  const char* threads = std::getenv("TVM_NUM_THREADS");
  std::printf("median %.4f ms, min %.4f ms, mean %.4f ms, max %.4f ms (%d runs, %s threads)\n",
              median, ms.front(), mean, ms.back(), runs, threads ? threads : "?");
}

int Run(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  ConfigureThreads(o.threads);
  Artifact art = LoadArtifact(o.artifact, o.check_host);
  if (!art.tvm_version.empty() && std::strlen(QCOMPILER_RUN_TVM_VERSION) > 0 &&
      art.tvm_version != QCOMPILER_RUN_TVM_VERSION) {
    std::fprintf(stderr, "warning: artifact %s was built with TVM %s, this runner with TVM %s\n",
                 art.dir.c_str(), art.tvm_version.c_str(), QCOMPILER_RUN_TVM_VERSION);
  }
  if (o.info) {
    std::printf("artifact %s\ntarget %s (%s)\n", art.dir.c_str(), art.target.c_str(),
                art.target_arch.c_str());
    for (const auto& io : art.inputs) {
      std::printf("input  %s%s\n", io.Describe().c_str(),
                  io.torch_input == "float" ? " (float, quantized inside the model)" : "");
    }
    for (const auto& io : art.outputs) std::printf("output %s\n", io.Describe().c_str());
    return 0;
  }
  std::vector<NpyArray> inputs = ReadInputs(o, art);

  std::optional<ffi::Module> vm;  // kept alive for main_fn
  ffi::Function main_fn;
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(art.library);
    auto load_exec = lib->GetFunction("vm_load_executable");
    if (!load_exec.has_value()) {
      throw RunnerError(art.library + " is not a Relax VM library (no vm_load_executable)",
                        kArtifactError);
    }
    vm = load_exec.value()().cast<ffi::Module>();
    constexpr int kPooledAllocator = 2;
    (*vm)->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0,
                                                    kPooledAllocator);
    auto fn = (*vm)->GetFunction("main");
    if (!fn.has_value()) throw RunnerError(art.library + " has no function 'main'", kArtifactError);
    main_fn = *fn;
  } catch (const ffi::Error& e) {
    throw RunnerError("TVM could not load " + art.library + ": " + e.kind() + ": " + e.message(),
                      kArtifactError);
  }

  std::vector<ffi::Any> args;
  for (const auto& a : inputs) args.emplace_back(ToTensor(a));
  std::vector<NpyArray> outputs;
  try {
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    ffi::Any result;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    outputs = CollectOutputs(result, art);
    if (o.bench > 0) Bench(main_fn, args, o.bench);
  } catch (const ffi::Error& e) {
    throw RunnerError("running the model failed: " + e.kind() + ": " + e.message(), kRunError);
  }
  if (!o.inputs.empty()) {
    MakeDirs(o.output_dir);
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::string p = o.output_dir + "/" + SafeFileName(art.outputs[i].name) + ".npy";
      WriteNpy(p, outputs[i]);
      if (!o.quiet) {
        std::printf("%s: %s%s -> %s\n", art.outputs[i].name.c_str(), outputs[i].dtype.c_str(),
                    ShapeStr(outputs[i].shape).c_str(), p.c_str());
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace qcrun

int main(int argc, char** argv) {
  try {
    return qcrun::Run(argc, argv);
  } catch (const qcrun::RunnerError& e) {
    std::fprintf(stderr, "qcompiler-run: error: %s\n", e.what());
    if (e.exit_code() == qcrun::kUsageError) std::fputs("(see qcompiler-run --help)\n", stderr);
    return e.exit_code();
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "qcompiler-run: error: TVM: %s: %s\n", e.kind().c_str(),
                 e.message().c_str());
    return qcrun::kRunError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qcompiler-run: error: %s\n", e.what());
    return qcrun::kRunError;
  }
}
