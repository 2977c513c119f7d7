/*
 * benchrun: the bench's guest-side timer (static, no libraries).
 *   benchrun now                                    prints CLOCK_MONOTONIC in ns
 *   benchrun NSFILE file PATH -- CMD ARGS...        execs CMD (same pid, so $! and SIGTERM
 *   benchrun NSFILE line OUTFILE TEXT -- CMD ARGS...  reach it); a detached watcher writes the
 *                                                   ns from just before exec until PATH exists /
 *                                                   OUTFILE contains TEXT into NSFILE (-1 after
 *                                                   300 s)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int file_has(const char *path, const char *text)
{
	static char buf[1 << 16];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, text) != NULL;
}

int main(int argc, char **argv)
{
	const char *nsfile, *mode, *path, *text = NULL;
	int cmd, fd;
	long long t0;
	pid_t child;

	if (argc == 2 && !strcmp(argv[1], "now")) {
		printf("%lld\n", now_ns());
		return 0;
	}
	if (argc < 5)
		goto usage;
	nsfile = argv[1];
	mode = argv[2];
	path = argv[3];
	if (!strcmp(mode, "file")) {
		cmd = 4;
	} else if (!strcmp(mode, "line") && argc >= 6) {
		text = argv[4];
		cmd = 5;
	} else {
		goto usage;
	}
	if (cmd >= argc || strcmp(argv[cmd], "--") || cmd + 1 >= argc)
		goto usage;
	cmd++;
	t0 = now_ns();
	child = fork();
	if (child < 0) {
		perror("benchrun: fork");
		return 1;
	}
	if (child == 0) {
		/* Double fork: the watcher belongs to init, not to CMD. */
		if (fork() != 0)
			_exit(0);
		fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		for (;;) {
			struct timespec ms = { 0, 1000000 };
			long long t = now_ns();
			struct stat st;
			int ready = text ? file_has(path, text) : stat(path, &st) == 0;

			if (ready || t - t0 > 300000000000LL) {
				char tmp[4096];
				FILE *f;

				snprintf(tmp, sizeof(tmp), "%s.tmp", nsfile);
				f = fopen(tmp, "w");
				if (!f)
					_exit(1);
				fprintf(f, "%lld\n", ready ? t - t0 : -1LL);
				fclose(f);
				rename(tmp, nsfile);
				_exit(0);
			}
			nanosleep(&ms, NULL);
		}
	}
	waitpid(child, NULL, 0);
	execvp(argv[cmd], argv + cmd);
	perror("benchrun: exec");
	return 127;
usage:
	fprintf(stderr, "usage: benchrun now | NSFILE file PATH -- CMD... | NSFILE line OUTFILE TEXT -- CMD...\n");
	return 2;
}
