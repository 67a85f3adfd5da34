/*
 * test_train.c — the training loop end to end: fisher_train on the built-in
 * synthetic cracks must actually learn (held-out loss and IoU improve), stop
 * when cancelled, report progress once per step, and fail cleanly when the
 * data source fails.
 */
#include "testutil.h"

#include "segformer.h"
#include "synth.h"
#include "train.h"

typedef struct {
    uint64_t seed;
    int64_t fail_at; /* step at which the batch source fails; -1 never */
} synth_source;

static int synth_batch(void *ctx, int64_t step, float *images, float *masks, int B, int H, int W,
                       fisher_error *err) {
    synth_source *src = ctx;
    if (step == src->fail_at) return fisher_errorf(err, "batch %lld unreadable", (long long)step);
    for (int b = 0; b < B; b++)
        fisher_synth_crack(images + (size_t)b * H * W * 3, masks + (size_t)b * H * W, H, W,
                           src->seed, (uint64_t)(step * B + b));
    return B;
}

typedef struct {
    int calls;
    int64_t last_step;
    volatile int *cancel;
    int64_t cancel_after;
} progress_log;

static void on_progress(void *ctx, const fisher_progress *p) {
    progress_log *log = ctx;
    log->calls++;
    assert_int_equal(p->step, log->last_step + 1);
    assert_true(isfinite(p->loss));
    log->last_step = p->step;
    if (log->cancel && p->step == log->cancel_after) *log->cancel = 1;
}

static fisher_train_config config(int64_t steps) {
    fisher_train_config tc = {.threads = 2, .batch_size = 4, .image_height = 64, .image_width = 64,
                              .steps = steps, .dice_weight = 0.65f, .optim = fisher_adamw_defaults()};
    tc.optim.lr = 1e-3f;
    return tc;
}

static void test_training_learns(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = test_tiny_model(0);
    synth_source train = {1, -1}, val = {2, -1};
    fisher_seg_metrics before, after;
    double loss_before, loss_after;
    assert_int_equal(fisher_evaluate(m, 4, 4, 64, 64, 0.65f, synth_batch, &val, &before, &loss_before, &err), 0);
    fisher_train_config tc = config(150);
    progress_log log = {0};
    assert_int_equal(fisher_train(m, &tc, synth_batch, &train, on_progress, &log, NULL, &err), 150);
    assert_int_equal(log.calls, 150);
    assert_int_equal(fisher_evaluate(m, 4, 4, 64, 64, 0.65f, synth_batch, &val, &after, &loss_after, &err), 0);
    printf("  held out: loss %.3f -> %.3f, IoU %.3f -> %.3f\n", loss_before, loss_after, before.iou, after.iou);
    assert_true(loss_after < 0.5 * loss_before);
    assert_true(after.iou > before.iou + 0.2);
    fisher_segformer_free(m);
}

static void test_cancel_stops_between_steps(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = test_tiny_model(0);
    synth_source train = {1, -1};
    volatile int cancel = 0;
    progress_log log = {.cancel = &cancel, .cancel_after = 3};
    fisher_train_config tc = config(50);
    assert_int_equal(fisher_train(m, &tc, synth_batch, &train, on_progress, &log, &cancel, &err), 3);
    assert_int_equal(log.calls, 3);
    fisher_segformer_free(m);
}

static void test_failing_batch_fails_the_run(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = test_tiny_model(0);
    synth_source train = {1, 2};
    fisher_train_config tc = config(10);
    assert_int_equal(fisher_train(m, &tc, synth_batch, &train, NULL, NULL, NULL, &err), -1);
    assert_string_equal(err.msg, "batch 2 unreadable");
    tc.batch_size = 0;
    assert_int_equal(fisher_train(m, &tc, synth_batch, &train, NULL, NULL, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "batch_size"));
    fisher_segformer_free(m);
}

/* Cleanup paths free a trainer twice, sometimes after its model is gone:
 * the second call must touch nothing (found by ASan in bench_step). */
static void test_trainer_free_twice(void **state) {
    (void)state;
    fisher_error err = {{0}};
    fisher_segformer *m = test_tiny_model(0);
    fisher_trainer t;
    assert_int_equal(fisher_trainer_init(&t, m, 2, 32, 32, fisher_adamw_defaults(), 0.65f,
                                         FISHER_STRATEGY_FISHER, NULL, &err), 0);
    fisher_trainer_free(&t);
    fisher_segformer_free(m);
    fisher_trainer_free(&t);
    assert_null(t.model);
}

static void test_synthetic_data_is_deterministic(void **state) {
    (void)state;
    float a[32 * 48 * 3], b[32 * 48 * 3], ma[32 * 48], mb[32 * 48];
    fisher_synth_crack(a, ma, 32, 48, 9, 17);
    fisher_synth_crack(b, mb, 32, 48, 9, 18);
    assert_true(memcmp(a, b, sizeof a) != 0);
    fisher_synth_crack(b, mb, 32, 48, 9, 17);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(ma, mb, sizeof ma);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_training_learns),
        cmocka_unit_test(test_cancel_stops_between_steps),
        cmocka_unit_test(test_failing_batch_fails_the_run),
        cmocka_unit_test(test_trainer_free_twice),
        cmocka_unit_test(test_synthetic_data_is_deterministic),
    };
    return cmocka_run_group_tests_name("train", tests, NULL, NULL);
}
