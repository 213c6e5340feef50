/* A stand-in for the CUDA driver (libcuda.so.1) whose "device memory" is host memory, for the CPU test suite.
 *
 * tests/test_copy_engine.py compiles it to <tmp>/libcuda.so.1 and runs Python with LD_LIBRARY_PATH pointing there,
 * so kvtier's real run-time loader, context handling, stream and event code, batched and loop copy paths, device
 * arena and host-tier page-locking all run on a machine without a GPU; only the final driver call differs.
 *
 * It is strict where the real driver is, so that mistakes show: calls that need a current context fail with
 * CUDA_ERROR_INVALID_CONTEXT without one (and count it), cuMemcpyBatchAsync rejects the NULL stream and invalid
 * attributes, a double registration or an unknown free fails. Streams run their copies in order on a worker thread,
 * so completion is really asynchronous. Test controls (fake_cuda_*) are exported for ctypes; environment:
 *   FAKE_CUDA_DEVICES     number of devices (default 1)
 *   FAKE_CUDA_VERSION     driver version (default 12080); below 12080 there is no cuMemcpyBatchAsync
 *   FAKE_CUDA_NO_BATCH    set: cuGetProcAddress does not find cuMemcpyBatchAsync
 *   FAKE_CUDA_BATCH_FAILS set: cuMemcpyBatchAsync returns CUDA_ERROR_NOT_SUPPORTED (the fallback path)
 *   FAKE_CUDA_INIT_ERROR  cuInit returns this code
 * Compile with -DFAKE_OMIT_MEMCPY to leave out cuMemcpyAsync (a library that is not a usable driver).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
#define OK 0
#define E_INVALID_VALUE 1
#define E_OUT_OF_MEMORY 2
#define E_NOT_INITIALIZED 3
#define E_INVALID_CONTEXT 201
#define E_INVALID_HANDLE 400
#define E_NOT_READY 600
#define E_LAUNCH_FAILED 719
#define E_ALREADY_REGISTERED 712
#define E_NOT_REGISTERED 713
#define E_NOT_SUPPORTED 801
#define MAX_DEV 8
#define MAX_ENTRIES 4096

typedef struct {
  int device;
  long refs;
} Ctx;

typedef struct Op {
  struct Op* next;
  int kind; /* 0 copy, 1 marker */
  void* dst;
  const void* src;
  size_t n;
} Op;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  Op* head;
  Op* tail;
  unsigned long long submitted, completed;
  int stop;
  CUresult error; /* sticky, like a real stream after a failed copy */
} Stream;

typedef struct {
  Stream* stream;
  unsigned long long seq;
  int recorded;
} Event;

typedef struct {
  uintptr_t p;
  size_t n;
  int device;
} Entry;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static int g_init, g_devices = 1, g_version = 12080, g_paused, g_fail_next;
static Ctx g_ctx[MAX_DEV];
static __thread Ctx* t_current;
static Entry g_alloc[MAX_ENTRIES], g_reg[MAX_ENTRIES];
static int g_nalloc, g_nreg;
static long long c_batch_calls, c_memcpy_calls, c_ctx_errors, c_streams_live, c_events_live, c_retains, c_copies;
static long long c_registered_bytes, c_alloc_bytes;

static void init_env(void) {
  const char* s = getenv("FAKE_CUDA_DEVICES");
  if (s) g_devices = atoi(s);
  if (g_devices > MAX_DEV) g_devices = MAX_DEV;
  s = getenv("FAKE_CUDA_VERSION");
  if (s) g_version = atoi(s);
  for (int i = 0; i < MAX_DEV; ++i) g_ctx[i].device = i;
}

static CUresult need_ctx(void) {
  if (!g_init) return E_NOT_INITIALIZED;
  if (t_current == NULL) {
    __sync_fetch_and_add(&c_ctx_errors, 1);
    return E_INVALID_CONTEXT;
  }
  return OK;
}

/* ---------------------------------------------------------------------------------------------- init, devices */
CUresult cuInit(unsigned flags) {
  (void)flags;
  init_env();
  const char* e = getenv("FAKE_CUDA_INIT_ERROR");
  if (e) return atoi(e);
  g_init = 1;
  return OK;
}
CUresult cuDriverGetVersion(int* v) { *v = g_version; return OK; }
CUresult cuDeviceGetCount(int* n) { if (!g_init) return E_NOT_INITIALIZED; *n = g_devices; return OK; }
CUresult cuDeviceGet(int* d, int ordinal) {
  if (!g_init) return E_NOT_INITIALIZED;
  if (ordinal < 0 || ordinal >= g_devices) return E_INVALID_VALUE;
  *d = ordinal;
  return OK;
}
CUresult cuDeviceGetName(char* name, int len, int dev) {
  if (dev < 0 || dev >= g_devices) return E_INVALID_VALUE;
  snprintf(name, (size_t)len, "kvtier fake CUDA device %d", dev);
  return OK;
}
CUresult cuDevicePrimaryCtxRetain(Ctx** ctx, int dev) {
  if (!g_init) return E_NOT_INITIALIZED;
  if (dev < 0 || dev >= g_devices) return E_INVALID_VALUE;
  __sync_fetch_and_add(&g_ctx[dev].refs, 1);
  __sync_fetch_and_add(&c_retains, 1);
  *ctx = &g_ctx[dev];
  return OK;
}
CUresult cuCtxSetCurrent(Ctx* ctx) { t_current = ctx; return OK; }
CUresult cuCtxGetCurrent(Ctx** ctx) { if (!g_init) return E_NOT_INITIALIZED; *ctx = t_current; return OK; }
CUresult cuCtxGetDevice(int* dev) {
  CUresult r = need_ctx();
  if (r) return r;
  *dev = t_current->device;
  return OK;
}

/* ---------------------------------------------------------------------------------------------- memory */
static int find(Entry* tab, int n, uintptr_t p) {
  for (int i = 0; i < n; ++i)
    if (p >= tab[i].p && p < tab[i].p + tab[i].n) return i;
  return -1;
}
CUresult cuMemAlloc_v2(CUdeviceptr* out, size_t n) {
  CUresult r = need_ctx();
  if (r) return r;
  if (n == 0) return E_INVALID_VALUE;
  const char* limit = getenv("FAKE_CUDA_MEMORY");
  if (limit && (long long)n + c_alloc_bytes > atoll(limit)) return E_OUT_OF_MEMORY;
  void* p = NULL;
  if (posix_memalign(&p, 256, n) != 0) return E_OUT_OF_MEMORY;
  memset(p, 0xA5, n); /* device memory is not zeroed: make stale bytes visible */
  pthread_mutex_lock(&g_mu);
  g_alloc[g_nalloc++] = (Entry){(uintptr_t)p, n, t_current->device};
  c_alloc_bytes += (long long)n;
  pthread_mutex_unlock(&g_mu);
  *out = (CUdeviceptr)(uintptr_t)p;
  return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
  CUresult r = need_ctx();
  if (r) return r;
  pthread_mutex_lock(&g_mu);
  int i = find(g_alloc, g_nalloc, (uintptr_t)p);
  if (i < 0 || g_alloc[i].p != (uintptr_t)p) {
    pthread_mutex_unlock(&g_mu);
    return E_INVALID_VALUE;
  }
  c_alloc_bytes -= (long long)g_alloc[i].n;
  g_alloc[i] = g_alloc[--g_nalloc];
  pthread_mutex_unlock(&g_mu);
  free((void*)(uintptr_t)p);
  return OK;
}
CUresult cuMemHostRegister_v2(void* p, size_t n, unsigned flags) {
  (void)flags;
  CUresult r = need_ctx();
  if (r) return r;
  if (p == NULL || n == 0) return E_INVALID_VALUE;
  pthread_mutex_lock(&g_mu);
  if (find(g_reg, g_nreg, (uintptr_t)p) >= 0 || find(g_reg, g_nreg, (uintptr_t)p + n - 1) >= 0) {
    pthread_mutex_unlock(&g_mu);
    return E_ALREADY_REGISTERED;
  }
  g_reg[g_nreg++] = (Entry){(uintptr_t)p, n, -1};
  c_registered_bytes += (long long)n;
  pthread_mutex_unlock(&g_mu);
  return OK;
}
CUresult cuMemHostUnregister(void* p) {
  CUresult r = need_ctx();
  if (r) return r;
  pthread_mutex_lock(&g_mu);
  int i = find(g_reg, g_nreg, (uintptr_t)p);
  if (i < 0 || g_reg[i].p != (uintptr_t)p) {
    pthread_mutex_unlock(&g_mu);
    return E_NOT_REGISTERED;
  }
  c_registered_bytes -= (long long)g_reg[i].n;
  g_reg[i] = g_reg[--g_nreg];
  pthread_mutex_unlock(&g_mu);
  return OK;
}
CUresult cuMemHostGetFlags(unsigned* flags, void* p) {
  CUresult r = need_ctx();
  if (r) return r;
  pthread_mutex_lock(&g_mu);
  int i = find(g_reg, g_nreg, (uintptr_t)p);
  pthread_mutex_unlock(&g_mu);
  if (i < 0) return E_INVALID_VALUE;
  *flags = 1;
  return OK;
}
CUresult cuPointerGetAttribute(void* data, int attribute, CUdeviceptr p) {
  if (!g_init) return E_NOT_INITIALIZED;
  pthread_mutex_lock(&g_mu);
  int a = find(g_alloc, g_nalloc, (uintptr_t)p);
  int h = find(g_reg, g_nreg, (uintptr_t)p);
  int dev = a >= 0 ? g_alloc[a].device : -1;
  pthread_mutex_unlock(&g_mu);
  if (a < 0 && h < 0) return E_INVALID_VALUE;
  if (attribute == 2) *(unsigned*)data = a >= 0 ? 2u : 1u; /* MEMORY_TYPE: DEVICE or HOST */
  else if (attribute == 9) *(int*)data = dev;               /* DEVICE_ORDINAL */
  else return E_INVALID_VALUE;
  return OK;
}

/* ---------------------------------------------------------------------------------------------- streams */
static void* stream_main(void* arg) {
  Stream* s = (Stream*)arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (s->head == NULL && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
    if (s->head == NULL) break;
    Op* op = s->head;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&g_mu); /* fake_cuda_pause(1) holds copies here */
    while (g_paused) pthread_cond_wait(&g_cv, &g_mu);
    int fail = g_fail_next && op->kind == 0;
    if (fail) g_fail_next = 0;
    pthread_mutex_unlock(&g_mu);
    if (op->kind == 0 && !fail && s->error == OK) {
      memcpy(op->dst, op->src, op->n);
      __sync_fetch_and_add(&c_copies, 1);
    }
    pthread_mutex_lock(&s->mu);
    if (fail) s->error = E_LAUNCH_FAILED;
    s->head = op->next;
    if (s->head == NULL) s->tail = NULL;
    s->completed += 1;
    free(op);
    pthread_cond_broadcast(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}
static unsigned long long enqueue(Stream* s, int kind, void* dst, const void* src, size_t n) {
  Op* op = (Op*)calloc(1, sizeof(Op));
  op->kind = kind;
  op->dst = dst;
  op->src = src;
  op->n = n;
  pthread_mutex_lock(&s->mu);
  if (s->tail) s->tail->next = op; else s->head = op;
  s->tail = op;
  unsigned long long seq = ++s->submitted;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return seq;
}
CUresult cuStreamCreate(Stream** out, unsigned flags) {
  (void)flags;
  CUresult r = need_ctx();
  if (r) return r;
  Stream* s = (Stream*)calloc(1, sizeof(Stream));
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  pthread_create(&s->thread, NULL, stream_main, s);
  __sync_fetch_and_add(&c_streams_live, 1);
  *out = s;
  return OK;
}
CUresult cuStreamDestroy_v2(Stream* s) {
  CUresult r = need_ctx();
  if (r) return r;
  if (s == NULL) return E_INVALID_HANDLE;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL); /* events may still refer to it: the struct is kept */
  __sync_fetch_and_sub(&c_streams_live, 1);
  return OK;
}
static CUresult wait_seq(Stream* s, unsigned long long seq, int block) {
  pthread_mutex_lock(&s->mu);
  while (block && s->completed < seq) pthread_cond_wait(&s->cv, &s->mu);
  CUresult r = s->completed < seq ? E_NOT_READY : s->error;
  pthread_mutex_unlock(&s->mu);
  return r;
}
CUresult cuStreamSynchronize(Stream* s) {
  CUresult r = need_ctx();
  if (r) return r;
  return wait_seq(s, s->submitted, 1);
}
CUresult cuStreamQuery(Stream* s) {
  CUresult r = need_ctx();
  if (r) return r;
  return wait_seq(s, s->submitted, 0);
}
#ifndef FAKE_OMIT_MEMCPY
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, Stream* s) {
  CUresult r = need_ctx();
  if (r) return r;
  if (s == NULL) return E_INVALID_VALUE; /* kvtier always uses its own stream */
  __sync_fetch_and_add(&c_memcpy_calls, 1);
  enqueue(s, 0, (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
  return OK;
}
#endif

typedef struct {
  int type;
  int id;
} MemLocation;
typedef struct {
  int srcAccessOrder;
  MemLocation srcLocHint;
  MemLocation dstLocHint;
  unsigned flags;
} MemcpyAttributes;

CUresult cuMemcpyBatchAsync(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count, MemcpyAttributes* attrs,
                            size_t* attr_idxs, size_t num_attrs, size_t* fail_idx, Stream* s) {
  CUresult r = need_ctx();
  if (r) return r;
  *fail_idx = (size_t)-1;
  if (getenv("FAKE_CUDA_BATCH_FAILS")) return E_NOT_SUPPORTED;
  if (s == NULL || count == 0 || num_attrs == 0 || num_attrs > count || attr_idxs[0] != 0) return E_INVALID_VALUE;
  for (size_t a = 0; a < num_attrs; ++a) {
    if (attrs[a].srcAccessOrder < 1 || attrs[a].srcAccessOrder > 3) {
      *fail_idx = attr_idxs[a];
      return E_INVALID_VALUE;
    }
    if (a > 0 && attr_idxs[a] <= attr_idxs[a - 1]) return E_INVALID_VALUE;
  }
  for (size_t i = 0; i < count; ++i)
    if (sizes[i] == 0 || dsts[i] == 0 || srcs[i] == 0) {
      *fail_idx = i;
      return E_INVALID_VALUE;
    }
  __sync_fetch_and_add(&c_batch_calls, 1);
  for (size_t i = 0; i < count; ++i) enqueue(s, 0, (void*)(uintptr_t)dsts[i], (const void*)(uintptr_t)srcs[i], sizes[i]);
  return OK;
}

CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version, unsigned long long flags, int* status) {
  (void)flags;
  *pfn = NULL;
  if (version > g_version) return E_INVALID_VALUE;
  if (strcmp(symbol, "cuMemcpyBatchAsync") == 0 && !getenv("FAKE_CUDA_NO_BATCH") && version >= 12080) {
    *pfn = (void*)&cuMemcpyBatchAsync;
    if (status) *status = 0;
  } else if (status) {
    *status = 1; /* CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND */
  }
  return OK;
}

/* ---------------------------------------------------------------------------------------------- events */
CUresult cuEventCreate(Event** out, unsigned flags) {
  (void)flags;
  CUresult r = need_ctx();
  if (r) return r;
  *out = (Event*)calloc(1, sizeof(Event));
  __sync_fetch_and_add(&c_events_live, 1);
  return OK;
}
CUresult cuEventRecord(Event* e, Stream* s) {
  CUresult r = need_ctx();
  if (r) return r;
  if (e == NULL || s == NULL) return E_INVALID_HANDLE;
  e->stream = s;
  e->seq = enqueue(s, 1, NULL, NULL, 0);
  e->recorded = 1;
  return OK;
}
CUresult cuEventQuery(Event* e) {
  CUresult r = need_ctx();
  if (r) return r;
  return e->recorded ? wait_seq(e->stream, e->seq, 0) : OK;
}
CUresult cuEventSynchronize(Event* e) {
  CUresult r = need_ctx();
  if (r) return r;
  return e->recorded ? wait_seq(e->stream, e->seq, 1) : OK;
}
CUresult cuEventDestroy_v2(Event* e) {
  CUresult r = need_ctx();
  if (r) return r;
  free(e);
  __sync_fetch_and_sub(&c_events_live, 1);
  return OK;
}

/* ---------------------------------------------------------------------------------------------- errors */
CUresult cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case OK: *s = "CUDA_SUCCESS"; return OK;
    case E_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; return OK;
    case E_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return OK;
    case E_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
    case 100: *s = "CUDA_ERROR_NO_DEVICE"; return OK;
    case E_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; return OK;
    case E_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; return OK;
    case E_NOT_READY: *s = "CUDA_ERROR_NOT_READY"; return OK;
    case E_ALREADY_REGISTERED: *s = "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"; return OK;
    case E_NOT_REGISTERED: *s = "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"; return OK;
    case E_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; return OK;
    case E_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; return OK;
    default: *s = NULL; return E_INVALID_VALUE;
  }
}
CUresult cuGetErrorString(CUresult e, const char** s) {
  const char* name = NULL;
  if (cuGetErrorName(e, &name) != OK) return E_INVALID_VALUE;
  *s = "fake driver error";
  if (e == 100) *s = "no CUDA-capable device is detected";
  if (e == E_INVALID_CONTEXT) *s = "invalid device context";
  if (e == E_LAUNCH_FAILED) *s = "unspecified launch failure";
  return OK;
}

/* ---------------------------------------------------------------------------------------------- test controls */
void fake_cuda_pause(int paused) {
  pthread_mutex_lock(&g_mu);
  g_paused = paused;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
}
void fake_cuda_fail_next_copy(void) {
  pthread_mutex_lock(&g_mu);
  g_fail_next = 1;
  pthread_mutex_unlock(&g_mu);
}
long long fake_cuda_counter(const char* name) {
  if (!strcmp(name, "batch_calls")) return c_batch_calls;
  if (!strcmp(name, "memcpy_calls")) return c_memcpy_calls;
  if (!strcmp(name, "copies")) return c_copies;
  if (!strcmp(name, "ctx_errors")) return c_ctx_errors;
  if (!strcmp(name, "streams_live")) return c_streams_live;
  if (!strcmp(name, "events_live")) return c_events_live;
  if (!strcmp(name, "retains")) return c_retains;
  if (!strcmp(name, "registered_bytes")) return c_registered_bytes;
  if (!strcmp(name, "registrations")) return g_nreg;
  if (!strcmp(name, "alloc_bytes")) return c_alloc_bytes;
  if (!strcmp(name, "allocations")) return g_nalloc;
  return -1;
}
/* Allocates fake device memory outside kvtier (as PyTorch would), on the calling thread's current context. */
CUdeviceptr fake_cuda_alloc(int device, size_t n) {
  Ctx* prev = t_current;
  t_current = &g_ctx[device];
  CUdeviceptr p = 0;
  CUresult r = cuMemAlloc_v2(&p, n);
  t_current = prev;
  return r == OK ? p : 0;
}
