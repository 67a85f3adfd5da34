/* version.h — the one place fisherd's version is written. */
#ifndef FISHERD_VERSION_H
#define FISHERD_VERSION_H
#define FISHERD_VERSION "0.1.0"
#endif
