// runneld configuration: defaults, the file, overrides, and errors that name the key.
#include "daemon/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace runnel {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  std::filesystem::path write(const std::string& text) {
    path_ = std::filesystem::temp_directory_path() / ("runnel-config-" + std::to_string(getpid()) + ".toml");
    std::ofstream(path_) << text;
    return path_;
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string error_of(const std::string& text, ConfigOverrides o = {}) {
    try {
      load_config(write(text), o);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
  std::filesystem::path path_;
};

TEST_F(ConfigTest, EmbeddedDefaultsGiveTheDocumentedListeners) {
  Config c = load_config(std::nullopt, {});
  ASSERT_EQ(c.listen.size(), 3u);
  EXPECT_EQ(c.listen[0].kind, ListenSpec::Kind::kTcp);
  EXPECT_EQ(c.listen[0].port, 8094);
  EXPECT_EQ(c.listen[1].kind, ListenSpec::Kind::kUdp);
  EXPECT_EQ(c.listen[1].port, 8089);
  EXPECT_EQ(c.listen[2].kind, ListenSpec::Kind::kUnix);
  EXPECT_EQ(c.listen[2].path, runtime_dir() + "/runnel.sock");
  EXPECT_EQ(c.shm_name, "runnel");
  EXPECT_EQ(c.fsync, FsyncPolicyKind::kInterval);
}

TEST_F(ConfigTest, PrintedDefaultsParseBackUnchanged) {
  Config a = load_config(std::nullopt, {});
  Config b = load_config(write(std::string(default_config_toml())), {});
  EXPECT_EQ(a.ring_capacity_bytes, b.ring_capacity_bytes);
  EXPECT_EQ(a.segment_bytes, b.segment_bytes);
  EXPECT_EQ(a.listen.size(), b.listen.size());
}

TEST_F(ConfigTest, FileValuesOverrideDefaults) {
  Config c = load_config(write("[log]\nfsync = \"always\"\nsegment_bytes = 1048576\n"), {});
  EXPECT_EQ(c.fsync, FsyncPolicyKind::kAlways);
  EXPECT_EQ(c.segment_bytes, 1048576u);
  EXPECT_EQ(c.fsync_interval_ms, 1000u);  // untouched keys keep their default
}

TEST_F(ConfigTest, FlagsOverrideTheFile) {
  ConfigOverrides o;
  o.data_dir = "/tmp/x";
  o.shm_name = "other";
  o.listen = {"tcp://127.0.0.1:9999?precision=ms"};
  Config c = load_config(write("[daemon]\nshm_name = \"fromfile\"\n"), o);
  EXPECT_EQ(c.data_dir, "/tmp/x");
  EXPECT_EQ(c.shm_name, "other");
  ASSERT_EQ(c.listen.size(), 1u);
  EXPECT_EQ(c.listen[0].port, 9999);
  EXPECT_EQ(c.listen[0].precision, Precision::kMs);
}

TEST_F(ConfigTest, UnknownKeyIsNamed) {
  EXPECT_NE(error_of("[log]\nfsnyc = \"always\"\n").find("unknown key 'log.fsnyc'"), std::string::npos);
  EXPECT_NE(error_of("[nope]\n").find("unknown key 'nope'"), std::string::npos);
}

TEST_F(ConfigTest, WrongTypeIsNamed) {
  EXPECT_NE(error_of("[log]\nsegment_bytes = \"big\"\n").find("'log.segment_bytes' has the wrong type"),
            std::string::npos);
}

TEST_F(ConfigTest, BadValuesAreNamed) {
  EXPECT_NE(error_of("[log]\nfsync = \"sometimes\"\n").find("log.fsync"), std::string::npos);
  EXPECT_NE(error_of("[ring]\ncapacity_bytes = 100000\n").find("ring.capacity_bytes"), std::string::npos);
  EXPECT_NE(error_of("[ring]\nmode = \"0999\"\n").find("ring.mode"), std::string::npos);
  EXPECT_NE(error_of("[ingest]\nlisten = [\"http://x:1\"]\n").find("ingest.listen"), std::string::npos);
  EXPECT_NE(error_of("[ingest]\nlisten = [\"tcp://127.0.0.1:99999\"]\n").find("bad port"), std::string::npos);
  EXPECT_NE(error_of("[daemon]\nshm_name = \"a/b\"\n").find("daemon.shm_name"), std::string::npos);
  EXPECT_NE(error_of("[daemon]\ncpu_scheduling = \"fifo\"\n").find("'daemon.cpu_scheduling' = 'fifo' must be batch or other"),
            std::string::npos);
}

TEST_F(ConfigTest, CpuSchedulingIsBatchUnlessSetToOther) {
  EXPECT_TRUE(load_config(std::nullopt, {}).cpu_scheduling_batch);
  EXPECT_FALSE(load_config(write("[daemon]\ncpu_scheduling = \"other\"\n"), {}).cpu_scheduling_batch);
}

TEST_F(ConfigTest, SyntaxErrorNamesFileAndLine) {
  std::string e = error_of("[log\nfsync = 1\n");
  EXPECT_NE(e.find(path_.string() + ":1:"), std::string::npos) << e;
}

TEST_F(ConfigTest, NoViewsMeansTheDefaultView) {
  Config c = load_config(std::nullopt, {});
  ASSERT_EQ(c.views.size(), 1u);
  EXPECT_EQ(c.views[0].name, "default");
  EXPECT_TRUE(c.views[0].group_all_tags);
  EXPECT_EQ(c.views[0].widths_ns.size(), 3u);
  EXPECT_EQ(c.speed_workers, 2u);
}

TEST_F(ConfigTest, ViewTablesAreReadWithDefaultsForMissingKeys) {
  Config c = load_config(write("[[view]]\nname = \"cpu\"\nmeasurements = [\"cpu*\"]\n"
                               "group_by = [\"region\", \"host\"]\nbuckets = [\"1m\", \"10s\"]\n"
                               "aggregates = [\"count\", \"p99\"]\n"
                               "[[view]]\nname = \"all\"\n"), {});
  ASSERT_EQ(c.views.size(), 2u);
  const ViewDef& v = c.views[0];
  EXPECT_EQ(v.name, "cpu");
  EXPECT_FALSE(v.group_all_tags);
  EXPECT_EQ(v.group_by, (std::vector<std::string>{"host", "region"}));
  EXPECT_EQ(v.widths_ns, (std::vector<int64_t>{10'000'000'000, 60'000'000'000}));
  EXPECT_TRUE(v.matches_measurement("cpu_total"));
  EXPECT_FALSE(v.matches_measurement("disk"));
  EXPECT_EQ(c.views[1].aggregates, default_view().aggregates);
  auto back = parse_view(v.canonical());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->canonical(), v.canonical());
  EXPECT_EQ(back->definition_hash(), v.definition_hash());
}

TEST_F(ConfigTest, BadViewDefinitionsNameTheView) {
  EXPECT_NE(error_of("[[view]]\nname = \"v\"\nbukets = [\"1s\"]\n").find("unknown key 'view[0].bukets'"),
            std::string::npos);
  EXPECT_NE(error_of("[[view]]\nname = \"v\"\nbuckets = [\"1x\"]\n").find("view 'v': buckets"),
            std::string::npos);
  EXPECT_NE(error_of("[[view]]\nname = \"v\"\nbuckets = [\"1s\", \"1s\"]\n").find("view 'v'"),
            std::string::npos);
  EXPECT_NE(error_of("[[view]]\nname = \"v\"\n[[view]]\nname = \"v\"\n").find("declared twice"),
            std::string::npos);
  EXPECT_NE(error_of("[[view]]\nmeasurements = [\"x\"]\n").find("'name' is required"), std::string::npos);
  EXPECT_NE(error_of("[speed]\nworkers = 3\n").find("speed.workers"), std::string::npos);
}

TEST_F(ConfigTest, BatchAndLogRetentionDefaults) {
  Config c = load_config(std::nullopt, {});
  EXPECT_TRUE(c.batch_enabled);
  EXPECT_EQ(c.batch_interval_ms, 1000u);
  EXPECT_EQ(c.batch_memory_budget_bytes, uint64_t{128} << 20);
  EXPECT_EQ(c.batch_initial_map_bytes, uint64_t{64} << 20);
  EXPECT_EQ(c.batch_max_map_bytes, uint64_t{64} << 30);
  ASSERT_EQ(c.batch_retention.rules.size(), 3u);
  EXPECT_EQ(c.batch_retention.keep_ns(1'000'000'000), 86'400'000'000'000);
  EXPECT_EQ(c.batch_retention.keep_ns(60'000'000'000), 30 * 86'400'000'000'000);
  EXPECT_EQ(c.batch_retention.keep_ns(3'600'000'000'000), 0) << "1h: forever";
  EXPECT_EQ(c.log_retention.max_age_ns, 0);
  EXPECT_EQ(c.log_retention.max_total_bytes, 0u);
}

TEST_F(ConfigTest, BatchAndLogRetentionKeysAreRead) {
  Config c = load_config(write("[batch]\nenabled = false\ninterval_ms = 50\nmemory_budget_bytes = 2097152\n"
                               "initial_map_bytes = 1048576\nmax_map_bytes = 4194304\n"
                               "retention = [\"1h:0\", \"10s:2h\"]\n"
                               "[log]\nretention_max_age = \"7d\"\nretention_max_bytes = 1000000\n"),
                         {});
  EXPECT_FALSE(c.batch_enabled);
  EXPECT_EQ(c.batch_interval_ms, 50u);
  EXPECT_EQ(c.batch_memory_budget_bytes, 2097152u);
  EXPECT_EQ(c.batch_initial_map_bytes, 1048576u);
  EXPECT_EQ(c.batch_max_map_bytes, 4194304u);
  ASSERT_EQ(c.batch_retention.rules.size(), 2u);
  EXPECT_EQ(c.batch_retention.rules[0].max_width_ns, 10'000'000'000) << "sorted by width";
  EXPECT_EQ(c.batch_retention.keep_ns(1'000'000'000), 7'200'000'000'000);
  EXPECT_EQ(c.batch_retention.keep_ns(3'600'000'000'000), 0);
  EXPECT_EQ(c.log_retention.max_age_ns, 7 * 86'400'000'000'000);
  EXPECT_EQ(c.log_retention.max_total_bytes, 1000000u);
}

TEST_F(ConfigTest, BadBatchAndRetentionValuesNameTheKey) {
  EXPECT_NE(error_of("[batch]\ninterval_ms = 0\n").find("batch.interval_ms"), std::string::npos);
  EXPECT_NE(error_of("[batch]\nmax_map_bytes = 10\n").find("batch.max_map_bytes"), std::string::npos);
  EXPECT_NE(error_of("[batch]\ninitial_map_bytes = 8388608\nmax_map_bytes = 4194304\n")
                .find("batch.initial_map_bytes"),
            std::string::npos);
  EXPECT_NE(error_of("[batch]\nretention = [\"1s\"]\n").find("batch.retention"), std::string::npos);
  EXPECT_NE(error_of("[batch]\nretention = [\"1x:1d\"]\n").find("batch.retention"), std::string::npos);
  EXPECT_NE(error_of("[batch]\nretention = [\"1s:soon\"]\n").find("batch.retention"), std::string::npos);
  EXPECT_NE(error_of("[batch]\nretention = [\"1s:1d\", \"1s:2d\"]\n").find("given twice"), std::string::npos);
  EXPECT_NE(error_of("[batch]\nretention = \"1s:1d\"\n").find("batch.retention"), std::string::npos);
  EXPECT_NE(error_of("[batch]\ncolour = 1\n").find("batch.colour"), std::string::npos);
  EXPECT_NE(error_of("[log]\nretention_max_age = \"week\"\n").find("log.retention_max_age"), std::string::npos);
  EXPECT_NE(error_of("[log]\nretention_max_age = 7\n").find("log.retention_max_age"), std::string::npos);
  EXPECT_NE(error_of("[log]\nretention_max_bytes = -1\n").find("log.retention_max_bytes"), std::string::npos);
}

TEST(ListenSpecTest, ParsesEveryScheme) {
  std::string err;
  auto t = ListenSpec::parse("tcp://[::1]:8094", "/run/x", &err);
  ASSERT_TRUE(t) << err;
  EXPECT_EQ(t->host, "::1");
  auto u = ListenSpec::parse("unix://@runtime/s.sock?precision=s", "/run/x", &err);
  ASSERT_TRUE(u) << err;
  EXPECT_EQ(u->path, "/run/x/s.sock");
  EXPECT_EQ(u->precision, Precision::kS);
  EXPECT_FALSE(ListenSpec::parse("unix://relative.sock", "/run/x", &err));
  EXPECT_FALSE(ListenSpec::parse("tcp://host", "/run/x", &err));
  EXPECT_FALSE(ListenSpec::parse("udp://h:1?precision=h", "/run/x", &err));
}

}  // namespace
}  // namespace runnel
