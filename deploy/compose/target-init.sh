#!/bin/sh
# The writer pgbridge connects as (it creates the tables: create_tables).
set -e
psql -v ON_ERROR_STOP=1 -U postgres -d analytics -v pw="$PGBRIDGE_TARGET_PASSWORD" <<'SQL'
CREATE ROLE pgbridge LOGIN PASSWORD :'pw';
GRANT CREATE ON DATABASE analytics TO pgbridge;
GRANT CREATE ON SCHEMA public TO pgbridge;
SQL
