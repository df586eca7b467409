/*
 * text/calib.h - the token ids a model is calibrated over (pi-profile, pi-train-predictors, and the
 * coordinator's first-load calibration of activation thresholds): a calibration text tokenized once
 * with BOS first, or uniformly random ids for models without a tokenizer.
 */
#ifndef PI_TEXT_CALIB_H
#define PI_TEXT_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* The calibration text installed with pinfer (data/demo-calib.txt), the default of every program that
 * calibrates; PI_DATADIR is the install's pkgdatadir, set by the build for the programs that use it. */
#ifndef PI_DATADIR
#define PI_DATADIR "/usr/local/share/pinfer"
#endif
#define PI_CALIB_DEFAULT_TEXT PI_DATADIR "/calib/demo-calib.txt"

struct pi_calib_args {
    const char *prog;  /* the program's name, first on every message */
    const char *model; /* the model's path (messages) */
    const char *text;  /* the text, or NULL for default_text */
    const char *default_text;
    long random_tokens; /* > 0: that many random ids instead of a text */
    uint64_t seed;      /* their seed */
};

/* The ids in *ids (malloc'd, *n of them) and the tokenizer's BOS in *bos (-1 for random ids). 0, or an
 * exit status: 2 for a usage error (no tokenizer, a missing or too large text), 1 otherwise; the
 * message is printed. */
int pi_calib_tokens(const struct pi_calib_args *a, const pi_model_t *m, int32_t **ids, size_t *n, int32_t *bos);

#endif
