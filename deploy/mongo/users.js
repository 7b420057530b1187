// MongoDB: one user per service, each with a role on only its own collections (security review M1).
// Idempotent: creates what is missing and updates the rest (roles from roles.json, passwords from the
// environment). The healthcheck (healthcheck.js) runs it once the node is primary and again whenever
// roles.json or a password changed; by hand (mongosh, inside the mongo container):
//
//   docker compose exec mongo mongosh --quiet --file /etc/wxlogin/users.js
//
// It acts as wxlogin-root (the administrator, MONGO_ROOT_PASSWORD), whom it creates first when no user
// exists at all (a new data volume, or one from a version without access control): MongoDB's localhost
// exception allows exactly that. No service ever receives the root password. Started by a user already
// logged in (mongosh -u admin …, against an external MongoDB), it acts as that user instead.
//
//   MONGO_ROLES               the table (default /etc/wxlogin/roles.json): service → collection → actions
//   MONGO_<SERVICE>_PASSWORD  the password of user wxlogin-<service>, for every service in the table
//   WXLOGIN_MONGO_DB          the services' database (default wxlogin), where the roles and users live
(() => {
  const fs = require("fs");
  const env = process.env;
  const ROOT = "wxlogin-root";
  const dbName = env.WXLOGIN_MONGO_DB || "wxlogin";
  const table = JSON.parse(fs.readFileSync(env.MONGO_ROLES || "/etc/wxlogin/roles.json", "utf8"));

  const fail = (message) => {
    throw new Error(`wxlogin mongo users: ${message}`);
  };

  // The passwords go into the services' WXLOGIN_MONGO_URL unescaped: URL-safe characters only.
  const password = (name) => {
    const value = env[name] || "";
    if (!value) fail(`set ${name} (see .env.example)`);
    if (!/^[A-Za-z0-9._~-]+$/.test(value)) fail(`${name} may only contain A-Z a-z 0-9 . _ ~ -`);
    if (value.length < 16) fail(`${name} must have at least 16 characters`);
    return value;
  };

  // Check the whole table before touching anything.
  const services = Object.keys(table);
  const passwords = {};
  for (const service of services) {
    if (!/^[a-z][a-z0-9_]*$/.test(service)) fail(`"${service}" is not a service name`);
    passwords[service] = password(`MONGO_${service.toUpperCase()}_PASSWORD`);
  }

  // Already logged in (mongosh -u …: an administrator of an external MongoDB): act as that user.
  const admin = db.getSiblingDB("admin");
  const status = admin.runCommand({ connectionStatus: 1 });
  if (status.authInfo.authenticatedUsers.length === 0) {
    const rootPassword = password("MONGO_ROOT_PASSWORD");
    try {
      admin.auth(ROOT, rootPassword);
    } catch (authError) {
      // No user at all yet: the localhost exception lets this connection create the first one.
      try {
        admin.createUser({ user: ROOT, pwd: rootPassword, roles: [{ role: "root", db: "admin" }] });
      } catch (createError) {
        fail(
          `cannot log in as ${ROOT} (${authError.message}) nor create it (${createError.message}); ` +
            "is MONGO_ROOT_PASSWORD the password it was created with?",
        );
      }
      admin.auth(ROOT, rootPassword);
      print(`wxlogin mongo users: created ${ROOT}`);
    }
  }

  const app = db.getSiblingDB(dbName);
  for (const service of services) {
    const name = `wxlogin-${service}`;
    const privileges = Object.entries(table[service]).map(([collection, actions]) => ({
      resource: { db: dbName, collection },
      actions,
    }));
    if (app.getRole(name)) {
      app.updateRole(name, { privileges, roles: [] });
    } else {
      app.createRole({ role: name, privileges, roles: [] });
    }
    const roles = [{ role: name, db: dbName }];
    if (app.getUser(name)) {
      app.updateUser(name, { pwd: passwords[service], roles });
    } else {
      app.createUser({ user: name, pwd: passwords[service], roles });
    }
    print(`wxlogin mongo users: ${name} on ${dbName}: ${Object.keys(table[service]).join(", ")}`);
  }
})();
