-- Ground truth for src/model/tests.rs: real PostgreSQL output for every
-- type the value decoder knows. Run against a throwaway PostgreSQL 15 server:
--
--   psql -h HOST -p PORT -U postgres -q -f gen_pg15_values.sql
--
-- then assemble testdata/pg15_values.tsv from the two files written below:
-- a first comment line, one "# catalog NAME=OID" line per row of catalog.tsv,
-- then pg15_values.tsv as is. Columns: type (OID or catalog name), text
-- form (the output function via format('%s')), binary form (the send
-- function, hex), expected JSON in Iso mode, expected JSON in EpochMicros
-- mode; '-' means not checked. The expected JSON is computed in SQL from
-- PostgreSQL's own field extraction (extract(), iso_8601 IntervalStyle,
-- to_json), not from this crate's code.
\set ON_ERROR_STOP 1
drop table if exists gt; drop type if exists mood cascade; drop domain if exists posint cascade;
create type mood as enum ('sad', 'ok', 'happy, really');
create domain posint as int4 check (value > 0);
create table gt(id serial, tag text, txt text, hex text, j_iso text, j_epoch text, iv interval);
create or replace function iso_ymd(y int, m int, d int) returns text language sql immutable as $$
  select case when a < 0 then '-' || lpad((-a)::text, 4, '0') when a > 9999 then '+' || a::text else lpad(a::text, 4, '0') end
    || '-' || lpad(m::text, 2, '0') || '-' || lpad(d::text, 2, '0')
  from (select case when y < 0 then y + 1 else y end as a) s $$;
create or replace function iso_hms(h int, mi int, us bigint) returns text language sql immutable as $$
  select lpad(h::text,2,'0') || ':' || lpad(mi::text,2,'0') || ':' || lpad((us / 1000000)::text,2,'0')
    || case when us % 1000000 = 0 then '' else '.' || rtrim(lpad((us % 1000000)::text, 6, '0'), '0') end $$;
create or replace function iso_ts(t timestamp) returns text language sql immutable as $$
  select case when isfinite(t) then iso_ymd(extract(year from t)::int, extract(month from t)::int, extract(day from t)::int)
    || 'T' || iso_hms(extract(hour from t)::int, extract(minute from t)::int, extract(microseconds from t)::bigint)
    else t::text end $$;
create or replace function iso_date(t date) returns text language sql immutable as $$
  select case when isfinite(t) then iso_ymd(extract(year from t)::int, extract(month from t)::int, extract(day from t)::int) else t::text end $$;
create or replace function iso_off(secs int) returns text language sql immutable as $$
  select case when secs < 0 then '-' else '+' end || lpad((abs(secs)/3600)::text,2,'0') || ':' || lpad((abs(secs)/60%60)::text,2,'0')
   || case when abs(secs) % 60 = 0 then '' else ':' || lpad((abs(secs)%60)::text,2,'0') end $$;

-- scalar, non-temporal: JSON from to_json
insert into gt(tag,txt,hex,j_iso) select '16', format('%s', x), encode(boolsend(x),'hex'), to_json(x)::text from unnest(array[true,false]) x;
insert into gt(tag,txt,hex,j_iso) select '17', format('%s', x), encode(byteasend(x),'hex'), to_json(replace(encode(x,'base64'),E'\n',''))::text from unnest(array['\x'::bytea,'\x000102ff','hello world, this is a longer bytea value that base64 wraps at 76 chars in PG']) x;
insert into gt(tag,txt,hex,j_iso) select '18', format('%s', x), encode(charsend(x),'hex'), to_json(format('%s', x))::text from unnest(array['a'::"char", '\200'::"char", ''::"char", '\377'::"char", 'Z'::"char"]) x;
insert into gt(tag,txt,hex,j_iso) select '19', format('%s', x), encode(namesend(x),'hex'), to_json(format('%s', x))::text from unnest(array['pg_class'::name, 'Ünïcode name']) x;
insert into gt(tag,txt,hex,j_iso) select '20', format('%s', x), encode(int8send(x),'hex'), to_json(x)::text from unnest(array[-9223372036854775808, 9223372036854775807, 0, 42]::int8[]) x;
insert into gt(tag,txt,hex,j_iso) select '21', format('%s', x), encode(int2send(x),'hex'), to_json(x)::text from unnest(array[-32768, 32767, 0, -1]::int2[]) x;
insert into gt(tag,txt,hex,j_iso) select '23', format('%s', x), encode(int4send(x),'hex'), to_json(x)::text from unnest(array[-2147483648, 2147483647, 0, 7]::int4[]) x;
insert into gt(tag,txt,hex,j_iso) select '25', format('%s', x), encode(textsend(x),'hex'), to_json(format('%s', x))::text from unnest(array['hello', 'with "quotes" and \backslash', 'ünïcödé 😀', '', 'NULL', '{a,b}']::text[]) x;
insert into gt(tag,txt,hex,j_iso) select '26', format('%s', x), encode(oidsend(x),'hex'), to_json(format('%s', x)::int8)::text from unnest(array[0, 4294967295, 16384]::oid[]) x;
insert into gt(tag,txt,hex,j_iso) select '114', format('%s', x), encode(json_send(x),'hex'), format('%s', x) from unnest(array['{"a": 1, "b": [1, 2.50, "x"]}'::json, '[12345678901234567890123, 0.1000000000000000000001]', ' {"dup": 1, "dup": 2} ', 'null', '"str\u00e9"']) x;
insert into gt(tag,txt,hex,j_iso) select '700', format('%s', x), encode(float4send(x),'hex'), case when format('%s', x) in ('NaN','Infinity','-Infinity') then to_json(format('%s', x))::text else format('%s', x) end from unnest(array[1.5, 'NaN', 'Infinity', '-Infinity', 1e30, 3.4028235e38, 1.1, '-0', 1e-45, 0.1, 123456.7]::float4[]) x;
insert into gt(tag,txt,hex,j_iso) select '701', format('%s', x), encode(float8send(x),'hex'), case when format('%s', x) in ('NaN','Infinity','-Infinity') then to_json(format('%s', x))::text else format('%s', x) end from unnest(array[1.5, 'NaN', 'Infinity', '-Infinity', 1e300, 0.1, 5e-324, '-0', 1.7976931348623157e308, 123456789.123456789, 1e15, 1e16]::float8[]) x;
insert into gt(tag,txt,hex,j_iso) select '1042', format('%s', x), encode(bpcharsend(x),'hex'), to_json(format('%s', x))::text from unnest(array['ab'::char(5), 'xyz'::char(3)]) x;
insert into gt(tag,txt,hex,j_iso) select '1043', format('%s', x), encode(varcharsend(x),'hex'), to_json(format('%s', x))::text from unnest(array['x'::varchar, 'longer value'::varchar(20)]) x;
insert into gt(tag,txt,hex,j_iso) select '1700', format('%s', x), encode(numeric_send(x),'hex'), to_json(format('%s', x))::text from unnest(array[0, 0.00, 1.50, -1.50, 123456789012345678901234567890.123456789, 0.0001, 0.00001234, 1e-20, 10000, 100000000, 'NaN', 'Infinity', '-Infinity', 9999.9999, -0.5, 1e100, 1.000, 12345.678900, 1e-1000, -123.456e-30, 0.1, 100, 99999999, 1.0001, 1000000000000.00000000]::numeric[]) x;
insert into gt(tag,txt,hex,j_iso) select '2950', format('%s', x), encode(uuid_send(x),'hex'), to_json(format('%s', x))::text from unnest(array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '00000000-0000-0000-0000-000000000000', 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF']) x;
insert into gt(tag,txt,hex,j_iso) select '3802', format('%s', x), encode(jsonb_send(x),'hex'), format('%s', x) from unnest(array['{"b": 1, "a": [1, 2.50, "x"]}'::jsonb, '12345678901234567890.123456789', 'null', '"str"', '[1e400]', '{"nested": {"k": [true, false, null]}}']) x;

-- temporal
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1082', format('%s', x), encode(date_send(x),'hex'), to_json(iso_date(x))::text,
  case when x = 'infinity' then '2147483647' when x = '-infinity' then '-2147483648' else (x - '1970-01-01'::date)::text end
  from unnest(array['2024-01-31', '2000-01-01', '1970-01-01', '0044-03-15 BC', '0001-01-01 BC', '0001-12-31 BC', '0001-01-01', '4713-11-24 BC', '5874897-12-31', '10000-01-01', 'infinity', '-infinity', '1999-12-31', '1600-02-29', '2400-02-29', '1900-03-01', '9999-12-31']::date[]) x;
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1083', format('%s', x), encode(time_send(x),'hex'), to_json(format('%s', x))::text, trunc(extract(epoch from x)*1000000)::text
  from unnest(array['00:00', '23:59:59.999999', '24:00:00', '12:34:56.5', '01:02:03.000001']::time[]) x;
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1266', format('%s', x), encode(timetz_send(x),'hex'), to_json(iso_hms(extract(hour from x)::int, extract(minute from x)::int, extract(microseconds from x)::bigint) || iso_off(extract(timezone from x)::int))::text,
  to_json(iso_hms(extract(hour from x)::int, extract(minute from x)::int, extract(microseconds from x)::bigint) || iso_off(extract(timezone from x)::int))::text
  from unnest(array['12:34:56+05:30', '00:00:00-03', '24:00:00+00', '12:00:00.123+05:30:15', '23:59:59.999999-15:59', '01:00:00+15:59:59', '10:00-00:00:01']::timetz[]) x;
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1114', format('%s', x), encode(timestamp_send(x),'hex'), to_json(iso_ts(x))::text,
  case when x = 'infinity' then '9223372036854775807' when x = '-infinity' then '-9223372036854775808' when x < '200000-01-01' then trunc(extract(epoch from x)*1000000)::text else (('x' || encode(timestamp_send(x),'hex'))::bit(64)::bigint::numeric + 946684800000000)::text end
  from unnest(array['2024-01-02 03:04:05.123456', '2000-01-01', '0044-03-15 12:00 BC', '294276-12-31 23:59:59.999999', '4714-11-24 00:00 BC', 'infinity', '-infinity', '1970-01-01', '1900-02-28 23:59:59.5', '10000-01-01 00:00:00', '1969-12-31 23:59:59.999999', '0001-01-01 00:00:00 BC']::timestamp[]) x;
set timezone = 'UTC';
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1184', format('%s', x), encode(timestamptz_send(x),'hex'), to_json(case when isfinite(x) then iso_ts(x at time zone 'UTC') || 'Z' else format('%s', x) end)::text,
  case when x = 'infinity' then '9223372036854775807' when x = '-infinity' then '-9223372036854775808' when x < '200000-01-01' then trunc(extract(epoch from x)*1000000)::text else (('x' || encode(timestamptz_send(x),'hex'))::bit(64)::bigint::numeric + 946684800000000)::text end
  from unnest(array['2024-01-02 03:04:05.123456+01', '2000-01-01 00:00:00+00', 'infinity', '-infinity', '0044-03-15 12:00+00 BC', '294276-12-31 23:59:59.999999+00', '4714-11-24 00:00:00+00 BC', '12345-06-07 08:09:10+00']::timestamptz[]) x;
set timezone = 'Asia/Kolkata';
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1184', format('%s', x), encode(timestamptz_send(x),'hex'), to_json(case when isfinite(x) then iso_ts(x at time zone 'UTC') || 'Z' else format('%s', x) end)::text,
  trunc(extract(epoch from x)*1000000)::text
  from unnest(array['2024-01-02 03:04:05.123456+01', '2000-01-01 00:00:00+00', '1999-12-31 23:00:00.5-02']::timestamptz[]) x;
set timezone = 'Europe/Amsterdam';
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1184', format('%s', x), encode(timestamptz_send(x),'hex'), to_json(case when isfinite(x) then iso_ts(x at time zone 'UTC') || 'Z' else format('%s', x) end)::text,
  trunc(extract(epoch from x)*1000000)::text
  from unnest(array['1900-01-01 12:00:00+00', '2024-07-01 12:00:00+00', '0010-01-01 00:00:00+00 BC', '1800-06-30 00:00:00.000001+00']::timestamptz[]) x;
set timezone = 'America/New_York';
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1184', format('%s', x), encode(timestamptz_send(x),'hex'), to_json(case when isfinite(x) then iso_ts(x at time zone 'UTC') || 'Z' else format('%s', x) end)::text,
  trunc(extract(epoch from x)*1000000)::text
  from unnest(array['2024-01-15 12:00:00+00', '2024-07-15 12:00:00+00', '1883-11-18 16:00:00+00', '1970-01-01 00:00:00+00']::timestamptz[]) x;
set timezone = 'Asia/Kathmandu';
insert into gt(tag,txt,hex,j_iso,j_epoch) select '1184', format('%s', x), encode(timestamptz_send(x),'hex'), to_json(case when isfinite(x) then iso_ts(x at time zone 'UTC') || 'Z' else format('%s', x) end)::text,
  trunc(extract(epoch from x)*1000000)::text
  from unnest(array['2024-01-15 12:00:00+00', '1900-01-01 00:00:00+00']::timestamptz[]) x;
set timezone = 'UTC';
insert into gt(tag,txt,hex,iv,j_epoch) select '1186', format('%s', x), encode(interval_send(x),'hex'), x, trunc(extract(epoch from x)*1000000)::text
  from unnest(array['1 year 2 mons 3 days 04:05:06.5', '-1 days +02:00:00', '0', '-1 year -2 mons +3 days -04:05:06', '1 mon', '-00:00:01.5', '178000000 years',
    '2562047788:00:54.775807', '-2562047788 hours -54.775808 seconds', '1 day', '100 hours', '-1 mons', '14 mons', '-178956970 years -8 mons', '178956970 years 7 mons',
    '2147483647 days', '-2147483648 days', '1 year -1 mons', '00:00:00.000001', '-1 days -00:00:00.000001', '3 days -1 hours', '1 mon -30 days', '12:00:00']::interval[]) x;
set intervalstyle = iso_8601;
update gt set j_iso = to_json(iv::text)::text where tag = '1186';
set intervalstyle = postgres;

-- enum and domain
insert into gt(tag,txt,hex,j_iso) select 'mood', format('%s', x), encode(enum_send(x),'hex'), to_json(format('%s', x))::text from unnest(array['sad','ok','happy, really']::mood[]) x;
insert into gt(tag,txt,hex,j_iso) select 'posint', format('%s', x), encode(int4send(x),'hex'), to_json(x)::text from unnest(array[1, 2147483647]::posint[]) x;

-- arrays (JSON checked only where to_json of PG agrees with our conventions)
insert into gt(tag,txt,hex,j_iso) select '1007', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values
  ('{1,2,NULL}'::int4[]), ('{{1,2},{3,4}}'), ('[0:1]={1,2}'), ('{}'), ('{NULL}'), ('[1:2][0:0][-1:0]={{{1,2}},{{3,4}}}'), ('{{NULL,NULL},{NULL,5}}'), ('[-2147483648:-2147483647]={7,8}')) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1009', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values
  ('{"a,b","c\\\"d",NULL,"NULL","null","", " sp ",ünï,"{}","\\\\"}'::text[]), ('{{a,b},{c,d}}'), ('{"x y"}'), ('{"a\tb"}')) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1014', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{ab,c}'::char(3)[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1015', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{x,"y z"}'::varchar[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1000', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{t,f,NULL}'::bool[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1005', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{1,-32768}'::int2[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1016', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{9223372036854775807,-1}'::int8[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1028', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{1,4294967295}'::oid[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1003', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{pg_class,"with space"}'::name[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1002', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{a,"\\\\",b}'::"char"[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1021', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{1.5,NaN,-Infinity,1e+30}'::float4[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1022', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{1.5,NaN,Infinity,0.1}'::float8[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1231', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{1.50,NaN,-0.001,NULL}'::numeric[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1001', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{"\\x01ff",NULL,"\\x"}'::bytea[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '2951', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'::uuid[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '3807', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values (array['{"a": 1}'::jsonb, null, '[1, "x,y"]'])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '199', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values (array['{"a":1}'::json, '2'])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1182', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{2024-01-01,infinity,-infinity}'::date[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1183', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{12:00:00,24:00:00}'::time[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1270', format('%s', x), encode(array_send(x),'hex'), '-' from (values ('{12:00:00+05:30,"01:00:00-03"}'::timetz[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1115', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{"2024-01-02 03:04:05.123456",infinity}'::timestamp[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1185', format('%s', x), encode(array_send(x),'hex'), '["2024-01-02T02:04:05.123456Z","-infinity"]' from (values ('{"2024-01-02 03:04:05.123456+01",-infinity}'::timestamptz[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '1187', format('%s', x), encode(array_send(x),'hex'), '["P1Y2M3DT4H5M6.5S","PT0S",null]' from (values ('{"1 year 2 mons 3 days 04:05:06.5",0,NULL}'::interval[])) as r(x);
insert into gt(tag,txt,hex,j_iso) select '_mood', format('%s', x), encode(array_send(x),'hex'), to_json(x)::text from (values ('{ok,"happy, really",NULL}'::mood[])) as r(x);

\pset format unaligned
\pset fieldsep '\t'
\pset tuples_only on
\o /tmp/pgv/gt/pg15_values.tsv
update gt set j_epoch = '-' where tag in ('1182', '1183', '1115', '1185', '1187', '1270');
select tag, txt, hex, coalesce(j_iso, '-'), coalesce(j_epoch, coalesce(j_iso, '-')) from gt order by id;
\o
\o /tmp/pgv/gt/catalog.tsv
select typname, oid from pg_type where typname in ('mood', '_mood', 'posint') order by typname;
\o
