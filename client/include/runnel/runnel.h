/* runnel's client library, C ABI: for other languages (and C). Reads a running runnel instance
 * from read-only shared memory. Plain structs and opaque handles; every function returns an int
 * status (RUNNEL_OK or a RUNNEL_ERR_*), runnel_last_error() gives the calling thread's text.
 * No exception ever crosses it. A handle is used by one thread at a time; the library reopens
 * the instance by name after a daemon restart, on the next call. */
#ifndef RUNNEL_RUNNEL_H_
#define RUNNEL_RUNNEL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes; the same numbers as runnel::client::Code. */
#define RUNNEL_OK 0
#define RUNNEL_ERR_NOT_FOUND 1    /* no such view */
#define RUNNEL_ERR_INVALID 2      /* a bad argument; the text names it */
#define RUNNEL_ERR_UNAVAILABLE 3  /* no such instance, or restarting: try again later */
#define RUNNEL_ERR_INCOMPATIBLE 4 /* shared-memory layout version this library does not read */
#define RUNNEL_ERR_CORRUPT 5
#define RUNNEL_ERR_TOO_SMALL 6 /* a caller-provided array is too small; see the call */
#define RUNNEL_ERR_INTERNAL 7  /* out of memory, or a bug */

/* The text of the last error on this thread ("" after success). Valid until the thread's next
 * runnel call. */
const char* runnel_last_error(void);

/* Frees anything the library allocated for the caller (NULL is fine). Each such result is one
 * block: its strings and arrays go with it. */
void runnel_free(void* p);

typedef struct runnel_client runnel_client;

/* Maps "<shm_name>.live", ".series" and ".stats" read-only. */
int runnel_open(const char* shm_name, runnel_client** out);
void runnel_close(runnel_client* c);

typedef struct {
  const char* key;
  const char* value;
} runnel_tag;

typedef struct {
  const char* name;
  size_t width_count;
  const int64_t* widths_ns; /* ascending */
  size_t output_count;
  const char* const* outputs; /* "count", "mean", "p99", ...: the order of every value array */
  const char* definition;     /* canonical definition text */
  uint32_t change_seq;        /* for runnel_wait_for_change */
  uint64_t capacity_entries;  /* live-table counters */
  uint64_t entries_used;
  uint64_t overflow_updates;
  uint64_t late_updates;
} runnel_view;

/* *views: library-allocated (runnel_free), *count entries. */
int runnel_list_views(runnel_client* c, runnel_view** views, size_t* count);

typedef struct {
  uint64_t row_id;
  const char* measurement;
  size_t tag_count;
  const runnel_tag* tags; /* sorted by key */
  const char* field;
} runnel_row;

/* Selects rows; NULL or empty members select anything. */
typedef struct {
  const char* measurement;
  const char* field;
  size_t where_count;
  const runnel_tag* where; /* exact tag key = value */
} runnel_filter;

/* The rows of `view` (NULL or "": of any view) that pass `filter` (may be NULL).
 * *rows: library-allocated (runnel_free). */
int runnel_find_rows(runnel_client* c, const char* view, const runnel_filter* filter,
                     runnel_row** rows, size_t* count);

/* One bucket, finalized: values[i] for output i (NaN where there is none); needs
 * values_cap >= the view's output_count (else RUNNEL_ERR_TOO_SMALL). An absent bucket has
 * *count 0. */
int runnel_read_bucket(runnel_client* c, const char* view, uint64_t row_id, int64_t width_ns,
                       int64_t bucket_start_ns, double* values, size_t values_cap, uint64_t* count);

typedef struct {
  const char* view;
  runnel_filter rows;
  int has_row_id; /* nonzero: exactly row_id instead of `rows` */
  uint64_t row_id;
  const char* group_by; /* a tag key: one series per value; NULL: none */
  int64_t from_ns;      /* the steps that intersect [from_ns, to_ns), whole */
  int64_t to_ns;
  int64_t step_ns;     /* a multiple of a width; 0: the finest width */
  size_t output_count; /* 0: every output of the view */
  const char* const* outputs;
  int fill_empty; /* nonzero: also steps without data (count 0) */
  /* RUNNEL_SOURCES_MERGED (0, the answer: batch views up to their watermark + live tables
   * beyond), or for diagnosis RUNNEL_SOURCES_BATCH_ONLY / RUNNEL_SOURCES_LIVE_ONLY. A zeroed
   * struct asks for the merged answer. */
  int sources;
} runnel_query;

#define RUNNEL_SOURCES_MERGED 0
#define RUNNEL_SOURCES_BATCH_ONLY 1
#define RUNNEL_SOURCES_LIVE_ONLY 2

typedef struct {
  const char* field;
  const char* group_value; /* NULL unless grouping */
  uint64_t rows;           /* rows with data in the range, merged */
  size_t point_count;
  const int64_t* ts_ns;   /* [point_count]: step starts, ascending */
  const uint64_t* counts; /* [point_count] */
  const double* values;   /* [point_count * output_count], point-major */
} runnel_series;

typedef struct {
  size_t output_count;
  const char* const* outputs;
  int64_t step_ns;
  int64_t width_ns; /* the bucket width merged */
  uint64_t busy_entries;
  size_t series_count;
  const runnel_series* series; /* by field, then group value; only those with data */
} runnel_result;

/* Library-allocated result (runnel_free). */
int runnel_query_range(runnel_client* c, const runnel_query* q, runnel_result** out);

/* Into caller-provided arrays, for a query that yields one series (a named field, no group_by):
 * ts_ns[cap], counts[cap], values[cap * output_count] (each may be NULL if unwanted). Sets
 * *points; when it exceeds cap, returns RUNNEL_ERR_TOO_SMALL and fills nothing. No data:
 * *points 0. */
int runnel_query_into(runnel_client* c, const runnel_query* q, int64_t* ts_ns, uint64_t* counts,
                      double* values, size_t cap, size_t* points);

/* Blocks without polling until the view's change sequence differs from *seq or timeout_ms
 * passes; *changed 1 or 0, *seq the current sequence. Start from runnel_view.change_seq. */
int runnel_wait_for_change(runnel_client* c, const char* view, uint32_t* seq, int64_t timeout_ms,
                           int* changed);

/* A daemon counter by name, as `runnelctl stats` shows it ("points_accepted", ...). */
int runnel_counter(runnel_client* c, const char* name, uint64_t* value);

/* Tail of the raw event stream (the ring), non-blocking. */
typedef struct runnel_tail runnel_tail;

int runnel_tail_open(const char* shm_name, int from_oldest, runnel_tail** out);
void runnel_tail_close(runnel_tail* t);
/* Copies whole '\n'-terminated line-protocol lines into buf (not NUL-terminated), as many as
 * fit: *used bytes, *lines lines; lines that do not fit stay for the next call. *overrun_bytes:
 * ring bytes lost since the last call because producers lapped the tail. Never blocks.
 * RUNNEL_ERR_TOO_SMALL when not even one line fits (*used = 0). */
int runnel_tail_poll(runnel_tail* t, char* buf, size_t buf_size, size_t* used, size_t* lines,
                     uint64_t* overrun_bytes);
/* Sleeps at most timeout_ms (keep it short) for new records; *ready 1 when some are there. */
int runnel_tail_wait(runnel_tail* t, int64_t timeout_ms, int* ready);

#ifdef __cplusplus
}
#endif

#endif /* RUNNEL_RUNNEL_H_ */
