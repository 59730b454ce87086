// Package importgraph holds a test that pins the direction of imports
// between Sotto's packages: cmd → api → node → store → protocol → keys.
package importgraph
