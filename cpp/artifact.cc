// Artifact checks, in the same order as qcompiler/runtime/artifact.py `load`: manifest format
// and version, signature, sha256 of every listed file, target architecture, CPU features. The
// library is loaded only after all of them passed.
#include "artifact.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>
#include <sys/stat.h>

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include "errors.h"
#include "npy.h"
#include "sha256.h"

namespace qcrun {
namespace {

namespace ffi = tvm::ffi;
using JObject = ffi::Map<ffi::Any, ffi::Any>;
using JArray = ffi::Array<ffi::Any>;

constexpr const char* kFormat = "qcompiler-artifact";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kLibraryFile = "model.so";
const char* const kStorageDtypes[] = {"uint8", "int8", "int32", "float32", "int64", "bool"};

bool IsDir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsFile(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string Basename(const std::string& p) {
  size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::string Dirname(const std::string& p) {
  size_t s = p.find_last_of('/');
  if (s == std::string::npos) return ".";
  return s == 0 ? "/" : p.substr(0, s);
}

class ManifestReader {
 public:
  explicit ManifestReader(std::string where) : where_(std::move(where)) {}

  [[noreturn]] void Fail(const std::string& msg) const {
    throw RunnerError("artifact " + where_ + ": " + msg);
  }

  std::optional<ffi::Any> Field(const JObject& obj, const std::string& key) const {
    for (const auto& kv : obj) {
      auto k = kv.first.as<ffi::String>();
      if (k.has_value() && std::string(*k) == key) return kv.second;
    }
    return std::nullopt;
  }

  ffi::Any Required(const JObject& obj, const std::string& key, const std::string& ctx) const {
    auto v = Field(obj, key);
    if (!v.has_value()) Fail("manifest " + ctx + ": missing key '" + key + "'");
    return *v;
  }

  JObject Object(const ffi::Any& v, const std::string& ctx) const {
    auto o = v.as<JObject>();
    if (!o.has_value()) Fail("manifest " + ctx + " must be a JSON object");
    return *o;
  }

  JArray Array(const ffi::Any& v, const std::string& ctx) const {
    auto a = v.as<JArray>();
    if (!a.has_value()) Fail("manifest " + ctx + " must be a JSON list");
    return *a;
  }

  std::string String(const ffi::Any& v, const std::string& ctx) const {
    auto s = v.as<ffi::String>();
    if (!s.has_value()) Fail("manifest " + ctx + " must be a string");
    return std::string(*s);
  }

  // "" for null or absent
  std::string OptString(const JObject& obj, const std::string& key, const std::string& ctx) const {
    auto v = Field(obj, key);
    if (!v.has_value() || *v == nullptr) return "";
    return String(*v, ctx + "." + key);
  }

  int64_t Int(const ffi::Any& v, const std::string& ctx) const {
    auto i = v.as<int64_t>();
    if (!i.has_value() || v.as<bool>().has_value()) Fail("manifest " + ctx + " must be an integer");
    return *i;
  }

  double Number(const ffi::Any& v, const std::string& ctx) const {
    if (auto d = v.as<double>()) return *d;
    return static_cast<double>(Int(v, ctx));
  }

 private:
  std::string where_;
};

std::string FormatNumber(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

std::string DescribeQParams(const ManifestReader& r, const JObject& q, const std::string& ctx) {
  JArray scale = r.Array(r.Required(q, "scale", ctx), ctx + ".scale");
  JArray zp = r.Array(r.Required(q, "zero_point", ctx), ctx + ".zero_point");
  if (scale.empty() || scale.size() != zp.size()) {
    r.Fail("manifest " + ctx + ": qparams need as many scales as zero points (got " +
           std::to_string(scale.size()) + " and " + std::to_string(zp.size()) + ")");
  }
  auto axis = r.Field(q, "axis");
  if (!axis.has_value() || *axis == nullptr) {
    return "scale=" + FormatNumber(r.Number(scale[0], ctx + ".scale[0]")) +
           ", zero_point=" + std::to_string(r.Int(zp[0], ctx + ".zero_point[0]"));
  }
  return "per-channel axis=" + std::to_string(r.Int(*axis, ctx + ".axis")) + ", " +
         std::to_string(scale.size()) + " scales";
}

IOSpec ParseIO(const ManifestReader& r, const ffi::Any& entry, const std::string& ctx) {
  JObject o = r.Object(entry, ctx);
  IOSpec io;
  io.name = r.String(r.Required(o, "name", ctx), ctx + ".name");
  JArray shape = r.Array(r.Required(o, "shape", ctx), ctx + ".shape");
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t d = r.Int(shape[i], ctx + ".shape");
    if (d < 0) r.Fail("manifest " + ctx + " (" + io.name + "): negative dimension in shape");
    io.shape.push_back(d);
  }
  io.dtype = r.String(r.Required(o, "dtype", ctx), ctx + ".dtype");
  if (std::find(std::begin(kStorageDtypes), std::end(kStorageDtypes), io.dtype) ==
      std::end(kStorageDtypes)) {
    r.Fail("manifest " + ctx + " (" + io.name + "): dtype '" + io.dtype +
           "' is not one of uint8, int8, int32, float32, int64, bool");
  }
  io.qdtype = r.OptString(o, "qdtype", ctx);
  io.torch_input = r.OptString(o, "torch_input", ctx);
  auto q = r.Field(o, "qparams");
  if (q.has_value() && *q != nullptr) {
    io.qparams = DescribeQParams(r, r.Object(*q, ctx + ".qparams"), ctx + ".qparams");
  }
  return io;
}

std::vector<IOSpec> ParseIOList(const ManifestReader& r, const JObject& m, const char* key) {
  JArray list = r.Array(r.Required(m, key, "top level"), std::string("'") + key + "'");
  std::vector<IOSpec> out;
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i) {
    out.push_back(ParseIO(r, list[i], std::string(key) + "[" + std::to_string(i) + "]"));
    if (!names.insert(out.back().name).second) {
      r.Fail(std::string("manifest: duplicate name '") + out.back().name + "' in " + key);
    }
  }
  return out;
}

void VerifyFiles(const ManifestReader& r, const JObject& m, const std::string& root) {
  auto files_any = r.Field(m, "files");
  if (!files_any.has_value() || !files_any->as<JObject>().has_value() ||
      !r.Field(files_any->as<JObject>().value(), kLibraryFile).has_value()) {
    r.Fail(std::string("manifest 'files' must list ") + kLibraryFile + " with its sha256");
  }
  for (const auto& kv : files_any->as<JObject>().value()) {
    std::string name = r.String(kv.first, "files key");
    if (name.empty() || name[0] == '/' || name == ".." || name.rfind("../", 0) == 0 ||
        name.find("/../") != std::string::npos ||
        (name.size() >= 3 && name.compare(name.size() - 3, 3, "/..") == 0)) {
      r.Fail("file name '" + name + "' leaves the artifact directory");
    }
    JObject meta = r.Object(kv.second, "files['" + name + "']");
    auto sha = r.Field(meta, "sha256");
    if (!sha.has_value() || !sha->as<ffi::String>().has_value()) {
      r.Fail("manifest entry for " + name + " has no sha256");
    }
    std::string want(*sha->as<ffi::String>());
    std::string fpath = root + "/" + name;
    if (!IsFile(fpath)) r.Fail(name + " is listed in the manifest but missing");
    std::string got = Sha256File(fpath);
    if (got != want) {
      r.Fail("checksum mismatch for " + name + " (manifest sha256 " + want.substr(0, 16) +
             "..., file sha256 " + got.substr(0, 16) +
             "...); the file was modified or corrupted after export, refusing to load it");
    }
  }
}

// --- host features -------------------------------------------------------------------------------

// /proc/cpuinfo flag -> canonical (LLVM) name; the same table as qcompiler/target.py.
using FlagName = std::pair<const char*, const char*>;
const FlagName kX86Flags[] = {
    {"sse", "sse"},
    {"sse2", "sse2"},
    {"pni", "sse3"},
    {"ssse3", "ssse3"},
    {"sse4_1", "sse4.1"},
    {"sse4_2", "sse4.2"},
    {"popcnt", "popcnt"},
    {"avx", "avx"},
    {"avx2", "avx2"},
    {"fma", "fma"},
    {"f16c", "f16c"},
    {"bmi1", "bmi"},
    {"bmi2", "bmi2"},
    {"abm", "lzcnt"},
    {"movbe", "movbe"},
    {"avx512f", "avx512f"},
    {"avx512cd", "avx512cd"},
    {"avx512bw", "avx512bw"},
    {"avx512dq", "avx512dq"},
    {"avx512vl", "avx512vl"},
    {"avx512_vnni", "avx512vnni"},
    {"avx_vnni", "avxvnni"},
    {"avx512_bf16", "avx512bf16"},
    {"avx512vbmi", "avx512vbmi"},
    {"avx512_vbmi2", "avx512vbmi2"},
    {"avx512_bitalg", "avx512bitalg"},
    {"avx512_vpopcntdq", "avx512vpopcntdq"},
    {"avx512ifma", "avx512ifma"},
    {"avx512_fp16", "avx512fp16"},
    {"gfni", "gfni"},
    {"vaes", "vaes"},
    {"vpclmulqdq", "vpclmulqdq"},
    {"amx_tile", "amx-tile"},
    {"amx_int8", "amx-int8"},
    {"amx_bf16", "amx-bf16"},
};

const FlagName kArmFlags[] = {
    {"asimd", "neon"}, {"asimddp", "dotprod"}, {"i8mm", "i8mm"}, {"asimdhp", "fullfp16"},
    {"bf16", "bf16"},  {"sve", "sve"},         {"sve2", "sve2"}, {"sme", "sme"},
};

template <size_t N>
std::vector<std::string> FeaturesFromCpuinfo(const char* key, const FlagName (&table)[N]) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::vector<std::string> out;
  while (std::getline(in, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = line.substr(0, colon);
    k.erase(k.find_last_not_of(" \t") + 1);
    std::transform(k.begin(), k.end(), k.begin(), ::tolower);
    if (k != key) continue;
    std::istringstream flags(line.substr(colon + 1));
    std::string f;
    while (flags >> f) {
      for (const auto& [raw, canonical] : table) {
        if (f == raw) out.push_back(canonical);
      }
    }
    break;
  }
  return out;
}

}  // namespace

std::string IOSpec::Describe() const {
  std::string s = name + ": " + dtype + ShapeStr(shape);
  if (!qdtype.empty()) s += " " + qdtype + "(" + qparams + ")";
  return s;
}

std::string RunnerArch() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

std::vector<std::string> HostFeatures() {
#if defined(__aarch64__)
  // HWCAP bits (asm/hwcap.h): the kernel's (or qemu-user's) view, like cpuinfo's Features line.
  unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  std::vector<std::string> out;
  if (hw & (1UL << 1)) out.push_back("neon");       // HWCAP_ASIMD
  if (hw & (1UL << 10)) out.push_back("fullfp16");  // HWCAP_ASIMDHP
  if (hw & (1UL << 20)) out.push_back("dotprod");   // HWCAP_ASIMDDP
  if (hw & (1UL << 22)) out.push_back("sve");       // HWCAP_SVE
  if (hw2 & (1UL << 1)) out.push_back("sve2");      // HWCAP2_SVE2
  if (hw2 & (1UL << 13)) out.push_back("i8mm");     // HWCAP2_I8MM
  if (hw2 & (1UL << 14)) out.push_back("bf16");     // HWCAP2_BF16
  if (hw2 & (1UL << 23)) out.push_back("sme");      // HWCAP2_SME
  if (out.empty()) out = FeaturesFromCpuinfo("features", kArmFlags);
  return out;
#else
  return FeaturesFromCpuinfo("flags", kX86Flags);
#endif
}

Artifact LoadArtifact(const std::string& path, bool check_host) {
  std::string root = path;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (IsFile(root) && (Basename(root) == kManifestFile || Basename(root) == kLibraryFile)) {
    root = Dirname(root);
  }
  if (!IsDir(root)) throw RunnerError("artifact directory " + path + " does not exist");
  ManifestReader r(root);
  std::string mpath = root + "/" + kManifestFile;
  if (!IsFile(mpath)) {
    throw RunnerError(root + " is not a qcompiler artifact: " + kManifestFile + " is missing");
  }
  std::ifstream in(mpath, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw RunnerError("cannot read " + mpath);
  ffi::String err;
  ffi::Any parsed = ffi::json::Parse(ffi::String(text), &err);
  if (!err.empty()) throw RunnerError("cannot read " + mpath + ": " + std::string(err));
  auto m_opt = parsed.as<JObject>();
  if (!m_opt.has_value()) throw RunnerError(mpath + " must hold a JSON object");
  JObject m = *m_opt;

  auto fmt = r.Field(m, "format");
  std::string fmt_s = fmt.has_value() && fmt->as<ffi::String>().has_value()
                          ? std::string(*fmt->as<ffi::String>())
                          : "(none)";
  if (fmt_s != kFormat) {
    r.Fail("not a qcompiler artifact: manifest format is '" + fmt_s + "', not '" + kFormat + "'");
  }
  auto version = r.Field(m, "format_version");
  auto version_i = version.has_value() ? version->as<int64_t>() : std::nullopt;
  if (!version_i.has_value() || *version_i != kFormatVersion) {
    std::string got = version_i.has_value() ? std::to_string(*version_i) : "(none)";
    r.Fail("format_version " + got + " is not supported (this runner reads version " +
           std::to_string(kFormatVersion) + ")" +
           (version_i.has_value() && *version_i > kFormatVersion
                ? "; it was written by a newer qcompiler"
                : ""));
  }

  Artifact a;
  a.dir = root;
  a.library = root + "/" + kLibraryFile;
  a.inputs = ParseIOList(r, m, "inputs");
  a.outputs = ParseIOList(r, m, "outputs");
  if (a.outputs.empty()) r.Fail("manifest: a compiled model needs at least one output");

  VerifyFiles(r, m, root);

  auto target_any = r.Field(m, "target");
  if (!target_any.has_value() || *target_any == nullptr) {
    r.Fail("the manifest records no target, so this runner cannot check the CPU features its "
           "code needs; refusing to load it");
  }
  JObject t = r.Object(*target_any, "'target'");
  std::string resolved = r.String(r.Required(t, "resolved", "target"), "target.resolved");
  std::string name = r.OptString(t, "name", "target");
  a.target = name.empty() || name == resolved ? resolved : name + " (" + resolved + ")";
  a.target_arch = r.String(r.Required(t, "arch", "target"), "target.arch");
  JArray feats = r.Array(r.Required(t, "features", "target"), "target.features");
  for (size_t i = 0; i < feats.size(); ++i) {
    a.target_features.push_back(r.String(feats[i], "target.features"));
  }
  auto versions = r.Field(m, "versions");
  if (versions.has_value() && versions->as<JObject>().has_value()) {
    a.tvm_version = r.OptString(versions->as<JObject>().value(), "tvm", "versions");
  }

  if (check_host) {
    std::string here = RunnerArch();
    if (a.target_arch != here) {
      r.Fail("compiled for " + a.target_arch + " (target " + a.target + "), but this runner is " +
             here + "; use a qcompiler-run built for " + a.target_arch +
             " or recompile the model for this machine");
    }
    std::vector<std::string> have = HostFeatures();
    std::vector<std::string> missing;
    for (const auto& f : a.target_features) {
      if (std::find(have.begin(), have.end(), f) == have.end()) missing.push_back(f);
    }
    if (!missing.empty()) {
      std::sort(missing.begin(), missing.end());
      std::string list;
      for (const auto& f : missing) list += (list.empty() ? "" : ", ") + f;
      r.Fail("compiled for " + a.target + " and may use CPU features this machine lacks: " +
             list + ". Refusing to run it, since it could crash with an illegal instruction; "
             "recompile it for target 'host' (or pass --skip-host-check if you know better)");
    }
  }
  return a;
}

}  // namespace qcrun
