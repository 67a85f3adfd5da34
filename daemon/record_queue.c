/*
 * record_queue.c — see record_queue.h. One mutex, one condition for room;
 * the list is a singly linked FIFO with a tail pointer.
 */
#include "record_queue.h"

#include <pthread.h>
#include <stdlib.h>

struct record_queue {
    pthread_mutex_t lock;
    pthread_cond_t room;          /* signalled when take_all or close frees the budget */
    record_item *head, *tail;
    size_t bytes, max_bytes;
    int closed;
    void (*wake)(void *ctx);
    void *ctx;
};

record_queue *record_queue_create(size_t max_bytes, void (*wake)(void *ctx), void *ctx) {
    record_queue *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    if (pthread_mutex_init(&q->lock, NULL)) goto err_free;
    if (pthread_cond_init(&q->room, NULL)) goto err_mutex;
    q->max_bytes = max_bytes, q->wake = wake, q->ctx = ctx;
    return q;
err_mutex:
    pthread_mutex_destroy(&q->lock);
err_free:
    free(q);
    return NULL;
}

void record_queue_free(record_queue *q) {
    if (!q) return;
    pthread_cond_destroy(&q->room);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

int record_queue_push(record_queue *q, record_item *item) {
    pthread_mutex_lock(&q->lock);
    /* an empty queue takes any item, so one oversized record cannot block forever */
    while (!q->closed && q->head && q->bytes + item->bytes > q->max_bytes)
        pthread_cond_wait(&q->room, &q->lock);
    if (q->closed) {
        pthread_mutex_unlock(&q->lock);
        return -1;
    }
    item->next = NULL;
    if (q->tail) q->tail->next = item;
    else q->head = item;
    q->tail = item;
    q->bytes += item->bytes;
    pthread_mutex_unlock(&q->lock);
    if (q->wake) q->wake(q->ctx);
    return 0;
}

record_item *record_queue_take_all(record_queue *q) {
    pthread_mutex_lock(&q->lock);
    record_item *all = q->head;
    q->head = q->tail = NULL;
    q->bytes = 0;
    pthread_cond_broadcast(&q->room);
    pthread_mutex_unlock(&q->lock);
    return all;
}

void record_queue_close(record_queue *q) {
    pthread_mutex_lock(&q->lock);
    q->closed = 1;
    pthread_cond_broadcast(&q->room);
    pthread_mutex_unlock(&q->lock);
}

size_t record_queue_bytes(record_queue *q) {
    pthread_mutex_lock(&q->lock);
    size_t b = q->bytes;
    pthread_mutex_unlock(&q->lock);
    return b;
}
