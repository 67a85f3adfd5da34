/*
 * test_record_queue.c — daemon/record_queue.h: order, the byte budget's
 * backpressure, the doorbell, and close releasing waiting producers.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "record_queue.h"

typedef struct {
    record_item item;
    int producer, seq;
} rec;

static atomic_int rings;
static void ring(void *ctx) {
    (void)ctx;
    atomic_fetch_add(&rings, 1);
}

enum { PRODUCERS = 3, PER_PRODUCER = 2000 };

typedef struct {
    record_queue *q;
    int producer;
    rec *recs;
} producer_arg;

static void *produce(void *p) {
    producer_arg *a = p;
    for (int i = 0; i < PER_PRODUCER; i++) {
        a->recs[i] = (rec){{NULL, 100}, a->producer, i};
        if (record_queue_push(a->q, &a->recs[i].item)) fail_msg("push refused before close");
    }
    return NULL;
}

/* Three producers push 2000 records of 100 bytes each through a 1000-byte
 * budget: they must block (at most 10 records fit), every record arrives
 * exactly once, each producer's in its order, and the queue never holds
 * more than the budget. */
static void test_order_and_backpressure(void **state) {
    (void)state;
    atomic_store(&rings, 0);
    record_queue *q = record_queue_create(1000, ring, NULL);
    assert_non_null(q);
    producer_arg args[PRODUCERS];
    pthread_t th[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) {
        args[p] = (producer_arg){q, p, malloc(PER_PRODUCER * sizeof(rec))};
        pthread_create(&th[p], NULL, produce, &args[p]);
    }
    int next[PRODUCERS] = {0}, got = 0;
    size_t most = 0;
    while (got < PRODUCERS * PER_PRODUCER) {
        size_t b = record_queue_bytes(q);
        most = b > most ? b : most;
        for (record_item *it = record_queue_take_all(q); it; it = it->next) {
            rec *r = (rec *)it;
            assert_int_equal(r->seq, next[r->producer]);
            next[r->producer]++, got++;
        }
        usleep(100);
    }
    for (int p = 0; p < PRODUCERS; p++) pthread_join(th[p], NULL), free(args[p].recs);
    printf("  %d records, at most %zu bytes queued, %d rings\n", got, most, atomic_load(&rings));
    assert_true(most <= 1000);
    assert_int_equal(atomic_load(&rings), PRODUCERS * PER_PRODUCER);
    assert_null(record_queue_take_all(q));
    record_queue_free(q);
}

static void *push_one(void *p) {
    producer_arg *a = p;
    a->recs[0] = (rec){{NULL, 600}, 0, 0};
    long rc = record_queue_push(a->q, &a->recs[0].item);
    return (void *)rc;
}

/* An item larger than the whole budget still goes into an empty queue;
 * a producer waiting for room is released by close with -1, and what was
 * queued before close can still be taken. */
static void test_oversized_and_close(void **state) {
    (void)state;
    record_queue *q = record_queue_create(500, NULL, NULL);
    rec big = {{NULL, 5000}, 0, 0};
    assert_int_equal(record_queue_push(q, &big.item), 0);
    rec waiting_rec;
    producer_arg a = {q, 0, &waiting_rec};
    pthread_t th;
    pthread_create(&th, NULL, push_one, &a);
    usleep(50000); /* it is waiting: the queue holds 5000 of 500 bytes */
    assert_int_equal(record_queue_bytes(q), 5000);
    record_queue_close(q);
    void *rc;
    pthread_join(th, &rc);
    assert_int_equal((long)rc, -1);
    record_item *all = record_queue_take_all(q);
    assert_ptr_equal(all, &big.item);
    assert_null(all->next);
    rec late = {{NULL, 1}, 0, 0};
    assert_int_equal(record_queue_push(q, &late.item), -1);
    record_queue_free(q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_backpressure),
        cmocka_unit_test(test_oversized_and_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
