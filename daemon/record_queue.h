/*
 * record_queue.h — how a training worker's records reach the store: a
 * bounded FIFO between many producer threads (the jobs' workers) and one
 * consumer (the libuv loop thread, which writes batches to SQLite and fans
 * them out to SSE subscribers).
 *
 * A push that would take the queue past its byte budget waits until the
 * consumer has drained it: backpressure slows training rather than
 * dropping records or growing memory without bound (DESIGN.md, data flow
 * step 4). The wake-up callback is the loop's doorbell (uv_async_send):
 * it is rung on every push, and libuv coalesces rings, so the consumer
 * takes everything queued in one batch.
 *
 * Items are the caller's structs with a record_item as their first member;
 * the queue never allocates, copies or frees them.
 */
#ifndef FISHERD_RECORD_QUEUE_H
#define FISHERD_RECORD_QUEUE_H

#include <stddef.h>

typedef struct record_item {
    struct record_item *next;
    size_t bytes;                 /* what the item holds, for the budget */
} record_item;

typedef struct record_queue record_queue;

/* max_bytes: the budget; an item alone larger than it is still accepted
 * when the queue is empty, so nothing can wait forever. wake(ctx) is called
 * after every push, outside the queue's lock, from the pushing thread.
 * NULL when out of memory. */
record_queue *record_queue_create(size_t max_bytes, void (*wake)(void *ctx), void *ctx);
/* The queue must be empty (take everything first) and no producer inside. */
void record_queue_free(record_queue *q);

/* Appends item, waiting while the budget is exhausted. Returns 0, or -1
 * (item not queued, still the caller's) once the queue is closed. Any thread. */
int record_queue_push(record_queue *q, record_item *item);

/* Everything queued, oldest first (NULL when empty); wakes waiting
 * producers. The consumer's thread. */
record_item *record_queue_take_all(record_queue *q);

/* Refuses further pushes and releases producers waiting for room (their
 * push returns -1). Items already queued stay to be taken. Any thread. */
void record_queue_close(record_queue *q);

/* Bytes queued now (for /metrics). Any thread. */
size_t record_queue_bytes(record_queue *q);

#endif
