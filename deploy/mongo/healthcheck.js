// MongoDB container healthcheck (mongosh --quiet --file): healthy once this node is the PRIMARY of
// the single-node replica set "rs0". The first runs initiate the set (idempotent: only while it is
// not initiated), so the services get retryable writes and a primary to talk to.
let healthy = false;
try {
  healthy = rs.status().myState === 1;
} catch (e) {
  if (e.codeName === "NotYetInitialized") {
    rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] });
  } else {
    print(`replica set status: ${e.message}`);
  }
}
quit(healthy ? 0 : 1);
