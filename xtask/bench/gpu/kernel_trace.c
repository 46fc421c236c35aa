// A CUPTI kernel tracer loaded by the CUDA driver into any process (CUDA_INJECTION64_PATH=libkernel_trace.so):
// every kernel's start and end, and at exit a summary of the last KTRACE_TAIL_MS milliseconds of GPU work
// (default 250: the decode steps of a bench run) as JSON lines on stderr, or appended to $KTRACE_OUT:
//   {"ktrace":"summary", "kernels", "span_us", "busy_us", "busy_frac", "gaps_us": {"<2","2-10","10-50",">50"}}
//   {"ktrace":"kernel", "name", "grid", "count", "total_us", "mean_us"}   (the 30 costliest name + grid pairs:
//   one kernel at different shapes, e.g. a matvec's q/k/v, o, gate/up and down projections, apart)
// Why: a decode step's time splits into kernels and the gaps between them (host-bound launches); a real profile
// says which to work on. `stage_kernels.sh` builds it here with gcc against
// CUPTI's headers from the nvidia-cu13 wheel that torch brings.
#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  uint64_t start, end;
  const char *name;
  int grid[3];
} Rec;

static Rec *recs;
static size_t nrecs, caprecs;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
  *size = 8 << 20;
  *buffer = aligned_alloc(8, *size);
  *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
  (void)ctx, (void)stream, (void)size;
  CUpti_Activity *r = NULL;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && r->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    // The fields used here sit in the prefix every CUpti_ActivityKernelN version shares.
    CUpti_ActivityKernel11 *k = (CUpti_ActivityKernel11 *)r;
    if (nrecs == caprecs) {
      caprecs = caprecs ? caprecs * 2 : 1 << 16;
      recs = realloc(recs, caprecs * sizeof(Rec));
    }
    recs[nrecs++] = (Rec){k->start, k->end, k->name ? k->name : "?", {k->gridX, k->gridY, k->gridZ}};
  }
  free(buffer);
}

static int by_start(const void *a, const void *b) {
  uint64_t x = ((const Rec *)a)->start, y = ((const Rec *)b)->start;
  return x < y ? -1 : x > y;
}

typedef struct {
  const char *name;
  int grid[3];
  uint64_t count, total;
} Agg;

static int by_total(const void *a, const void *b) {
  uint64_t x = ((const Agg *)a)->total, y = ((const Agg *)b)->total;
  return x > y ? -1 : x < y;
}

static void report(void) {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const char *path = getenv("KTRACE_OUT");
  FILE *out = path ? fopen(path, "a") : stderr;
  if (!out) out = stderr;
  if (!nrecs) {
    fprintf(out, "{\"ktrace\":\"summary\",\"kernels\":0}\n");
    return;
  }
  qsort(recs, nrecs, sizeof(Rec), by_start);
  uint64_t last = 0;
  for (size_t i = 0; i < nrecs; i++)
    if (recs[i].end > last) last = recs[i].end;
  const char *tail_env = getenv("KTRACE_TAIL_MS");
  uint64_t tail = (uint64_t)((tail_env ? atof(tail_env) : 250.0) * 1e6);
  uint64_t from = last > tail ? last - tail : 0;
  size_t first = 0;
  while (first < nrecs && recs[first].start < from) first++;
  uint64_t busy = 0, cover = 0, gaps[4] = {0, 0, 0, 0};
  Agg *agg = calloc(nrecs - first + 1, sizeof(Agg));
  size_t nagg = 0;
  for (size_t i = first; i < nrecs; i++) {
    Rec *r = &recs[i];
    // Busy time is the union of kernel intervals; a gap is idle time before a kernel.
    if (r->start > cover && cover) {
      uint64_t g = r->start - cover;
      gaps[g < 2000 ? 0 : g < 10000 ? 1 : g < 50000 ? 2 : 3] += g;
    }
    uint64_t s = r->start > cover ? r->start : cover;
    if (r->end > s) busy += r->end - s;
    if (r->end > cover) cover = r->end;
    size_t j = 0;
    while (j < nagg && (strcmp(agg[j].name, r->name) != 0 || memcmp(agg[j].grid, r->grid, sizeof r->grid) != 0)) j++;
    if (j == nagg) agg[nagg++] = (Agg){r->name, {r->grid[0], r->grid[1], r->grid[2]}, 0, 0};
    agg[j].count++;
    agg[j].total += r->end - r->start;
  }
  uint64_t span = last - (first < nrecs ? recs[first].start : last);
  fprintf(out,
          "{\"ktrace\":\"summary\",\"kernels\":%zu,\"span_us\":%.1f,\"busy_us\":%.1f,\"busy_frac\":%.3f,"
          "\"gaps_us\":{\"<2\":%.1f,\"2-10\":%.1f,\"10-50\":%.1f,\">50\":%.1f}}\n",
          nrecs - first, span / 1e3, busy / 1e3, span ? (double)busy / span : 0.0, gaps[0] / 1e3, gaps[1] / 1e3,
          gaps[2] / 1e3, gaps[3] / 1e3);
  qsort(agg, nagg, sizeof(Agg), by_total);
  for (size_t j = 0; j < nagg && j < 30; j++) {
    char name[161];
    size_t n = 0;
    for (const char *c = agg[j].name; *c && n < 160; c++) name[n++] = (*c == '"' || *c == '\\') ? '\'' : *c;
    name[n] = 0;
    fprintf(out,
            "{\"ktrace\":\"kernel\",\"name\":\"%s\",\"grid\":[%d,%d,%d],\"count\":%lu,\"total_us\":%.1f,"
            "\"mean_us\":%.2f}\n",
            name, agg[j].grid[0], agg[j].grid[1], agg[j].grid[2], (unsigned long)agg[j].count, agg[j].total / 1e3,
            agg[j].total / 1e3 / agg[j].count);
  }
  if (out != stderr) fclose(out);
}

int InitializeInjection(void) {
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    fprintf(stderr, "kernel_trace: CUPTI refused activity tracing\n");
    return 0;
  }
  atexit(report);
  return 1;
}
