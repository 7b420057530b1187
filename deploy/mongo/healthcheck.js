// MongoDB container healthcheck (mongosh --quiet --file): healthy once this node is the PRIMARY of the
// single-node replica set "rs0" and the services' roles and users (users.js) are in place. It connects
// without credentials: `hello` needs none, and the one-time steps use the localhost exception or log in
// as wxlogin-root from the container's environment:
//   - a set never initiated is initiated (the localhost exception allows it while no user exists);
//   - once primary, users.js runs, and again whenever roles.json or a password changed (a digest of
//     them is kept in MONGO_USERS_MARK, default /tmp/wxlogin-users.sha256, for this container's life).
const fs = require("fs");
const crypto = require("crypto");

const env = process.env;
const ROLES = env.MONGO_ROLES || "/etc/wxlogin/roles.json";
const USERS_SCRIPT = env.MONGO_USERS_SCRIPT || "/etc/wxlogin/users.js";
const MARK = env.MONGO_USERS_MARK || "/tmp/wxlogin-users.sha256";
const REPLICA_SET = { _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] };

// What users.js depends on: the table, the database name and every password it sets.
function usersDigest() {
  const hash = crypto.createHash("sha256");
  hash.update(fs.readFileSync(ROLES));
  for (const name of Object.keys(env).sort()) {
    if (/^MONGO_[A-Z0-9_]+_PASSWORD$/.test(name) || name === "WXLOGIN_MONGO_DB") {
      hash.update(`\n${name}=${env[name]}`);
    }
  }
  return hash.digest("hex");
}

function readMark() {
  try {
    return fs.readFileSync(MARK, "utf8");
  } catch (e) {
    return "";
  }
}

function initiate() {
  try {
    rs.initiate(REPLICA_SET);
  } catch (e) {
    if (e.codeName !== "Unauthorized") throw e;
    // Users exist already (a restored volume): initiate as the administrator.
    db.getSiblingDB("admin").auth("wxlogin-root", env.MONGO_ROOT_PASSWORD || "");
    rs.initiate(REPLICA_SET);
  }
}

let healthy = false;
try {
  const hello = db.hello();
  if (hello.isWritablePrimary) {
    const digest = usersDigest();
    if (readMark() !== digest) {
      load(USERS_SCRIPT);
      fs.writeFileSync(MARK, digest, { mode: 0o600 });
    }
    healthy = true;
  } else if (hello.isreplicaset && !hello.setName) {
    initiate(); // started with --replSet but never initiated; primary within seconds
  }
} catch (e) {
  print(`wxlogin mongo healthcheck: ${e.message}`);
}
quit(healthy ? 0 : 1);
