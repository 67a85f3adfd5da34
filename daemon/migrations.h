/*
 * migrations.h — the schema migrations embedded in the binary (generated
 * from migrations/NNNN_what.sql by daemon/embed_migrations.sh). Migration
 * i (1-based) takes a database from PRAGMA user_version i − 1 to i.
 */
#ifndef FISHERD_MIGRATIONS_H
#define FISHERD_MIGRATIONS_H

typedef struct {
    int version;            /* the user_version it brings the database to */
    const char *name;       /* its file name, for messages */
    const char *sql;
} fisherd_migration;

extern const fisherd_migration fisherd_migrations[];
extern const int fisherd_migrations_count;

#endif
