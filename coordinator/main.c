/*
 * coordinator/main.c - pi-coordinator: parse the command line and the config file, then run one
 * prompt (one-shot mode), a chat (interactive mode) or serve the control socket (server mode).
 * Everything else lives in the other files of coordinator/ (see coordinator/coordinator.h).
 */
#include "config.h"
#include "coordinator/coordinator.h"
#include "coordinator/options.h"
#include "kernels/cpu/dispatch.h"
#include "lib/common.h"
#include "lib/log.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    pi_log_set_program("pi-coordinator");
    struct pi_coord_opts o = {0};
    int mode = pi_coord_opts_parse(&o, argc, argv, stdout);
    if (mode < 0) { pi_coord_opts_free(&o); return PI_EXIT_USAGE; }
    if (mode == PI_COORD_EXIT_OK) { pi_coord_opts_free(&o); return PI_EXIT_OK; }
    enum pi_log_level lv;
    if (pi_log_parse_level(o.cfg.log_level, &lv) != 0) {
        fprintf(stderr, "pi-coordinator: %s%s[log] level: '%s' is not one of: error, warn, info, debug\n",
                o.config_path ? o.config_path : "", o.config_path ? ": " : "", o.cfg.log_level);
        pi_coord_opts_free(&o);
        return PI_EXIT_USAGE;
    }
    pi_log_set_level(lv);
    setenv("PI_LOG_LEVEL", o.cfg.log_level, 1); /* the workers log at the same level */
    pi_kernels_use(pi_kernels_of_tune(&o.cfg.tune)); /* this process's kernels; the workers get --set tune.* */
    int status = mode == PI_COORD_ONESHOT       ? pi_coord_run_oneshot(&o, argv[0])
                 : mode == PI_COORD_INTERACTIVE ? pi_coord_run_interactive(&o, argv[0])
                                                : pi_coord_run_server(&o, argv[0]);
    pi_coord_opts_free(&o);
    return status;
}
