-- Least privilege in PostgreSQL (services/runtime/roles.py fills in the {names}, quoted as
-- identifiers or literals). Blocks are separated by a line `-- block: NAME`; each runs whole.
--
-- owner_role      NOLOGIN role that owns one schema; migrations run as it (SET ROLE).
-- service_role    the login role of one service: data in its own schema only, nothing else.
-- operator_role   the login role of the operator commands that read: SELECT everywhere, and
--                 appending to the audit trail (for changes made on the broker alone).

-- block: owner
-- Run as an administrator (CREATEROLE): the schema's owner, and the schema, owned by it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {owner_name}) THEN
        CREATE ROLE {owner_role} NOLOGIN;
    END IF;
END $$;
-- A role of that name made by someone else is held to the same: it cannot log in or do more.
ALTER ROLE {owner_role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT {owner_role} TO CURRENT_USER;
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner_role};
ALTER SCHEMA {schema} OWNER TO {owner_role};

-- block: adopt
-- The schema and the objects made before the roles existed (by whoever migrated then) pass to
-- the schema's owner; a sequence owned by a table follows its table.
DO $$
DECLARE
    object record;
BEGIN
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', {schema_name}, {owner_name});
    FOR object IN
        SELECT format('%I.%I', n.nspname, c.relname) AS name,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END AS kind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = {schema_name} AND c.relkind IN ('r', 'p', 'v', 'S')
          AND pg_get_userbyid(c.relowner) <> {owner_name}
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', object.kind, object.name, {owner_name});
    END LOOP;
    FOR object IN
        SELECT p.oid::regprocedure::text AS name
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = {schema_name} AND pg_get_userbyid(p.proowner) <> {owner_name}
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', object.name, {owner_name});
    END LOOP;
END $$;

-- block: login
-- A login role that can do nothing by itself: no superuser, no roles, no databases, no other
-- role's privileges (a role of that name made before is stripped of every membership), and it
-- does not inherit what it might be granted later. The password arrives hashed (SCRAM), so no
-- statement log can hold it.
DO $$
DECLARE
    granted record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {login_name}) THEN
        CREATE ROLE {login_role} LOGIN;
    END IF;
    FOR granted IN SELECT m.roleid::regrole::text AS name FROM pg_auth_members m
                   WHERE m.member = {login_name}::regrole
    LOOP
        EXECUTE format('REVOKE %s FROM %I', granted.name, {login_name});
    END LOOP;
END $$;
ALTER ROLE {login_role} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD {password};

-- block: database
-- Nobody else may connect to Homeward's database, nor create objects in its public schema.
REVOKE ALL ON DATABASE {database} FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE {database} TO {logins};

-- block: service_schema
-- Run as the schema's owner, after every migration: the service reads and writes its own
-- tables (never TRUNCATE, never DDL: it owns nothing) and reads yoyo's record of what is applied.
GRANT USAGE ON SCHEMA {schema} TO {service_role}, {operator_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {service_role};
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {service_role};
REVOKE INSERT, UPDATE, DELETE ON {bookkeeping} FROM {service_role};
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {operator_role};
GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {operator_role};

-- block: append_only
-- Journals are append-only for the service by privilege, as well as by their triggers.
REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {service_role};

-- block: audit_schema
-- Run as the audit schema's owner: the commands that change a service's data append to the trail
-- with that service's role, in the change's own transaction; those that change only the broker
-- (`dlq replay`) with the operator's. Nobody but the owner may alter or remove a line.
GRANT USAGE ON SCHEMA {schema} TO {service_roles}, {operator_role};
-- Only the columns a record is made of: when (`at`) and the line's number are the database's own.
REVOKE INSERT ON ALL TABLES IN SCHEMA {schema} FROM {service_roles}, {operator_role};
GRANT INSERT (operator, command, arguments, outcome) ON {schema}.operator_actions TO {service_roles}, {operator_role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {service_roles}, {operator_role};
GRANT SELECT ON {bookkeeping} TO {service_roles};
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {operator_role};
