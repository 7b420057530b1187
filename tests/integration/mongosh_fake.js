// Runs a mongosh script of deploy/mongo under node against a hand-written stand-in for the parts of
// mongosh's API they use (no mongod runs here), and prints what the script did as JSON.
//
//   node mongosh_fake.js SCRIPT STATE_JSON
//
// STATE_JSON: {env, users: {"db.user": password}, roles: {"db.role": {...}}, hello, authenticated,
// admins}.
// The stand-in enforces what a real mongod with --auth would: without a login only the localhost
// exception (the first user, while there is none; replica set initiation) and hello.
// Output: {calls: [[name, ...args]], exit: quit() code or null, error: uncaught message or null,
// users, roles} (the state after the run).
"use strict";
const fs = require("fs");
const path = require("path");
const vm = require("vm");

const [script, stateJson] = process.argv.slice(2);
const state = JSON.parse(stateJson);
state.users = state.users || {};
state.roles = state.roles || {};
const calls = [];
let loggedIn = state.authenticated || null; // "db.user"

class MongoServerError extends Error {
  constructor(message, codeName) {
    super(message);
    this.codeName = codeName;
  }
}

// wxlogin-root, or an administrator of the caller's own (STATE_JSON admins: ["db.user"]).
const isRoot = () => loggedIn === "admin.wxlogin-root" || (state.admins || []).includes(loggedIn);
const requireRoot = (what) => {
  if (!isRoot()) throw new MongoServerError(`not authorized to ${what}`, "Unauthorized");
};

function database(name) {
  return {
    getName: () => name,
    getSiblingDB: (other) => database(other),
    hello: () => state.hello,
    runCommand(cmd) {
      if (cmd.connectionStatus) {
        const [db, user] = loggedIn ? loggedIn.split(/\.(.*)/s) : [];
        return { ok: 1, authInfo: { authenticatedUsers: loggedIn ? [{ user, db }] : [] } };
      }
      throw new Error(`the fake has no command ${JSON.stringify(cmd)}`);
    },
    auth(user, pwd) {
      calls.push(["auth", name, user]);
      if (state.users[`${name}.${user}`] !== pwd) {
        throw new MongoServerError("Authentication failed.", "AuthenticationFailed");
      }
      loggedIn = `${name}.${user}`;
      return { ok: 1 };
    },
    createUser(doc) {
      // The localhost exception: the first user of all, by anyone on this host.
      if (Object.keys(state.users).length > 0) requireRoot("createUser");
      const key = `${name}.${doc.user}`;
      if (key in state.users) throw new MongoServerError(`User "${key}" already exists`, "Location51003");
      state.users[key] = doc.pwd;
      calls.push(["createUser", name, doc.user, doc.roles]);
    },
    getUser(user) {
      requireRoot("getUser");
      return `${name}.${user}` in state.users ? { user, db: name } : null;
    },
    updateUser(user, update) {
      requireRoot("updateUser");
      if (!(`${name}.${user}` in state.users)) throw new MongoServerError("no such user", "UserNotFound");
      if (update.pwd !== undefined) state.users[`${name}.${user}`] = update.pwd;
      calls.push(["updateUser", name, user, update.roles]);
    },
    getRole(role) {
      requireRoot("getRole");
      return state.roles[`${name}.${role}`] || null;
    },
    createRole(doc) {
      requireRoot("createRole");
      const key = `${name}.${doc.role}`;
      if (key in state.roles) throw new MongoServerError(`Role "${key}" already exists`, "Location51002");
      state.roles[key] = { privileges: doc.privileges, roles: doc.roles };
      calls.push(["createRole", name, doc.role, doc.privileges, doc.roles]);
    },
    updateRole(role, update) {
      requireRoot("updateRole");
      const key = `${name}.${role}`;
      if (!(key in state.roles)) throw new MongoServerError("no such role", "RoleNotFound");
      state.roles[key] = { privileges: update.privileges, roles: update.roles };
      calls.push(["updateRole", name, role, update.privileges, update.roles]);
    },
  };
}

class Quit {
  constructor(code) {
    this.code = code;
  }
}

const context = vm.createContext({
  db: database("test"),
  rs: {
    initiate(config) {
      // Allowed by the localhost exception while no user exists; afterwards only when logged in.
      if (Object.keys(state.users).length > 0 && !loggedIn) {
        throw new MongoServerError("not authorized on admin to execute command", "Unauthorized");
      }
      calls.push(["rs.initiate", config]);
      return { ok: 1 };
    },
  },
  print: (...parts) => calls.push(["print", parts.join(" ")]),
  quit: (code) => {
    throw new Quit(code);
  },
  // mongosh's load(): runs another file in the same global scope.
  load(file) {
    calls.push(["load", file]);
    vm.runInContext(fs.readFileSync(path.resolve(file), "utf8"), context, { filename: file });
    return true;
  },
  require,
  process: { env: state.env || {} },
});

let exit = null;
let error = null;
try {
  vm.runInContext(fs.readFileSync(script, "utf8"), context, { filename: script });
} catch (e) {
  if (e instanceof Quit) exit = e.code;
  else error = String(e && e.message ? e.message : e);
}
process.stdout.write(JSON.stringify({ calls, exit, error, users: state.users, roles: state.roles }));
