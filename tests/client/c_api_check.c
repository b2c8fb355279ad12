/* The C ABI used from C: this file is compiled as C11 and includes nothing of runnel but
 * runnel.h. c_api_test.cc prepares an instance and calls runnel_c_api_check(). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runnel/runnel.h"

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      snprintf(err, err_len, "%s:%d: %s (last error: %s)", __FILE__, __LINE__, #cond, \
               runnel_last_error());                                                  \
      goto out;                                                                       \
    }                                                                                 \
  } while (0)

/* Expects view "default" with a row cpu,host=a field v; `total` events of it lie in
 * [from_ns, to_ns), one minute step. Returns 0, or 1 with a message in err. */
int runnel_c_api_check(const char* shm_name, int64_t from_ns, int64_t to_ns, uint64_t total,
                       char* err, size_t err_len) {
  int rc = 1;
  runnel_client* c = NULL;
  runnel_view* views = NULL;
  runnel_row* rows = NULL;
  runnel_result* result = NULL;
  size_t n = 0, row_count = 0;
  err[0] = '\0';

  CHECK(runnel_open("runnel-c-api-no-such-instance", &c) == RUNNEL_ERR_UNAVAILABLE);
  CHECK(strstr(runnel_last_error(), "runnel-c-api-no-such-instance") != NULL);
  CHECK(runnel_open(shm_name, &c) == RUNNEL_OK);
  CHECK(runnel_last_error()[0] == '\0');

  CHECK(runnel_list_views(c, &views, &n) == RUNNEL_OK);
  CHECK(n == 1 && strcmp(views[0].name, "default") == 0);
  CHECK(views[0].width_count == 3 && views[0].widths_ns[1] == 60000000000LL);
  CHECK(views[0].output_count == 6 && strcmp(views[0].outputs[4], "mean") == 0);
  CHECK(strstr(views[0].definition, "name=default") != NULL);

  runnel_tag where = {"host", "a"};
  runnel_filter filter = {"cpu", "v", 1, &where};
  CHECK(runnel_find_rows(c, "default", &filter, &rows, &row_count) == RUNNEL_OK);
  CHECK(row_count == 1 && strcmp(rows[0].field, "v") == 0 && rows[0].tag_count == 1);
  CHECK(strcmp(rows[0].tags[0].key, "host") == 0 && strcmp(rows[0].tags[0].value, "a") == 0);

  double values[6];
  uint64_t count = 0;
  CHECK(runnel_read_bucket(c, "default", rows[0].row_id, 3600000000000LL,
                           from_ns - from_ns % 3600000000000LL, values, 6, &count) == RUNNEL_OK);
  CHECK(count > 0 && values[0] == (double)count);
  CHECK(runnel_read_bucket(c, "default", rows[0].row_id, 60000000000LL, from_ns, values, 2,
                           &count) == RUNNEL_ERR_TOO_SMALL);
  CHECK(runnel_read_bucket(c, "nope", rows[0].row_id, 60000000000LL, from_ns, values, 6, &count) ==
        RUNNEL_ERR_NOT_FOUND);

  runnel_query q;
  memset(&q, 0, sizeof q);
  q.view = "default";
  q.rows = filter;
  q.from_ns = from_ns;
  q.to_ns = to_ns;
  q.step_ns = 60000000000LL;
  CHECK(runnel_query_range(c, &q, &result) == RUNNEL_OK);
  CHECK(result->series_count == 1 && result->output_count == 6 && result->width_ns == q.step_ns);
  {
    uint64_t sum = 0;
    const runnel_series* s = &result->series[0];
    CHECK(strcmp(s->field, "v") == 0 && s->group_value == NULL && s->rows == 1);
    for (size_t i = 0; i < s->point_count; ++i) {
      sum += s->counts[i];
      CHECK(s->values[i * 6] == (double)s->counts[i]);
    }
    CHECK(sum == total);
  }
  /* Without a batch layer the live tables are the whole answer, and the batch views hold none. */
  {
    runnel_result* side = NULL;
    q.sources = RUNNEL_SOURCES_LIVE_ONLY;
    CHECK(runnel_query_range(c, &q, &side) == RUNNEL_OK);
    CHECK(side->series_count == 1);
    runnel_free(side);
    q.sources = RUNNEL_SOURCES_BATCH_ONLY;
    CHECK(runnel_query_range(c, &q, &side) == RUNNEL_OK);
    CHECK(side->series_count == 0);
    runnel_free(side);
    q.sources = RUNNEL_SOURCES_MERGED;
  }

  {
    int64_t ts[64];
    uint64_t counts[64];
    double vals[64 * 6];
    size_t points = 0;
    CHECK(runnel_query_into(c, &q, ts, counts, vals, 64, &points) == RUNNEL_OK);
    CHECK(points == result->series[0].point_count && ts[0] == result->series[0].ts_ns[0]);
    CHECK(runnel_query_into(c, &q, ts, counts, vals, 0, &points) == RUNNEL_ERR_TOO_SMALL);
    q.step_ns = 7;
    CHECK(runnel_query_into(c, &q, ts, counts, vals, 64, &points) == RUNNEL_ERR_INVALID);
    CHECK(strstr(runnel_last_error(), "step") != NULL);
  }

  {
    uint32_t seq = views[0].change_seq;
    int changed = 1;
    CHECK(runnel_wait_for_change(c, "default", &seq, 10, &changed) == RUNNEL_OK);
    CHECK(changed == 0);
  }
  {
    uint64_t v = 0;
    CHECK(runnel_counter(c, "series_count", &v) == RUNNEL_OK && v >= 1);
    CHECK(runnel_counter(c, "no_such_counter", &v) == RUNNEL_ERR_NOT_FOUND);
  }
  rc = 0;
out:
  runnel_free(result);
  runnel_free(rows);
  runnel_free(views);
  runnel_close(c);
  return rc;
}

/* Tails the ring: expects `lines` new lines to be published after the call starts polling;
 * the caller publishes them from another thread. */
int runnel_c_tail_check(const char* shm_name, const char* expect, char* err, size_t err_len) {
  int rc = 1;
  runnel_tail* t = NULL;
  char buf[4096];
  size_t used = 0, lines = 0, got = 0;
  uint64_t overrun = 0;
  err[0] = '\0';
  CHECK(runnel_tail_open(shm_name, 1, &t) == RUNNEL_OK);
  CHECK(runnel_tail_poll(t, buf, 8, &used, &lines, &overrun) == RUNNEL_ERR_TOO_SMALL);
  CHECK(runnel_tail_poll(t, buf, sizeof buf, &used, &lines, &overrun) == RUNNEL_OK);
  got = used;
  CHECK(got == strlen(expect) && memcmp(buf, expect, got) == 0);
  CHECK(lines == 2 && overrun == 0);
  rc = 0;
out:
  runnel_tail_close(t);
  return rc;
}
