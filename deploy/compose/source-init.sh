#!/bin/sh
# The source's tables, publication and replication role (first start only).
set -e
psql -v ON_ERROR_STOP=1 -U postgres -d app -v pw="$PGBRIDGE_SOURCE_PASSWORD" <<'SQL'
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'pw';
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers,
  amount numeric(12,2), created_at timestamptz DEFAULT now());
CREATE TABLE order_items (order_id bigint REFERENCES orders, line int, sku text, qty int,
  PRIMARY KEY (order_id, line));
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com'
  FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, amount) SELECT 1 + g % 1000, g * 1.25 FROM generate_series(1, 10000) g;
INSERT INTO order_items SELECT o, l, 'sku-' || (o * l) % 97, l FROM generate_series(1, 10000) o, generate_series(1, 3) l;
CREATE PUBLICATION analytics_pub FOR TABLE customers, orders, order_items;
GRANT SELECT ON customers, orders, order_items TO replicator;
SQL
