// Package importgraph holds a test that pins the imports between Sotto's
// top-level packages to one table: cmd → api → node → mailbox → p2p →
// protocol → keys, with node and mailbox also importing store and store
// importing protocol, node importing invite (which imports keys), never
// p2p → store. Non-test files of cmd and api
// import nothing below node, and only test files import internal/.
package importgraph
