/*
 * coordinator/pipeline.h - the process pipeline as an engine (coordinator/engine.h): the
 * coordinator spawns pi-gpu-worker and the CPU workers, hands them the shared-memory segments and
 * supervises them; a batch goes to the GPU worker through the step channel (ipc/step.h).
 */
#ifndef PI_COORDINATOR_PIPELINE_H
#define PI_COORDINATOR_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "coordinator/coordinator.h"
#include "coordinator/engine.h"
#include "compute/placement.h"
#include "coordinator/supervisor.h"
#include "lib/conf.h"

/* Start the pipeline for o's configuration over cm's model (both borrowed for the engine's
 * lifetime), with o->n_seq sequences (<= 0: one) in the GPU worker's cache, each of [model] ctx
 * positions (counted in the placement's device plan). Spawns the workers from the calling thread, which must outlive them
 * (coordinator/supervisor.h). NULL on failure (logged). */
pi_engine_t *pi_engine_pipeline_new(const struct pi_coord_opts *o, const struct pi_coord_model *cm, const char *argv0);

/* The workers of a pipeline engine (0 for any other engine): see pi_super_snapshot. */
size_t pi_engine_pipeline_workers(pi_engine_t *e, struct pi_worker_info *out, size_t cap);

/* The placement map of a pipeline engine (borrowed for the engine's lifetime); NULL for any other. */
const struct pi_placement *pi_engine_pipeline_placement(pi_engine_t *e);

/* Create the run directory dir (mode 0700) when missing; 0 when it is a directory of this user that
 * nobody else can enter, else one error line and a negative pi_err (the sockets live there). */
int pi_coord_run_dir_check(const char *dir);

/* Make the request in flight on a pipeline engine (if any) return -PI_ERR_PEER now rather than
 * when its step answers or times out, for a shutdown; the next reset restarts the pipeline, and
 * destroying the engine stops the workers with SHUTDOWN (no STOP through the step channel). Safe
 * from another thread while the engine is alive; no-op for any other engine. */
void pi_engine_pipeline_cancel(pi_engine_t *e);

/* CPU workers the configuration asks for: [cpu] workers, or one per NUMA node when 0. */
int pi_coord_cpu_workers(const struct pi_config *c);

#endif
