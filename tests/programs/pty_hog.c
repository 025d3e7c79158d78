/* Opens /dev/ptmx until it fails or argv[1] (default 100) are open; says how many
 * and why it stopped. Issue 27, finding 8 (tests/docker.rs). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 100, got = 0;
    const char *why = "done";
    while (got < want) {
        if (open("/dev/ptmx", O_RDWR | O_NOCTTY) < 0) {
            why = strerror(errno);
            break;
        }
        got++;
    }
    printf("opened %d: %s\n", got, why);
    return 0;
}
