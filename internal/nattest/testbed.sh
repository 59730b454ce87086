#!/usr/bin/env bash
# testbed.sh: a small internet on one machine, built from Linux network
# namespaces and nftables, for testing how Sotto nodes reach each other
# through NAT (nat_test.go drives it).
#
#   testbed.sh up   PREFIX                      build the testbed
#   testbed.sh down PREFIX                      remove it (safe to repeat)
#   testbed.sh nat  PREFIX ROUTER preserve|random
#   testbed.sh udp  PREFIX ROUTER drop|allow
#   testbed.sh block PREFIX NS all|ADDR...      drop NS's traffic (with ADDRs)
#   testbed.sh loss PREFIX NS PERCENT           drop PERCENT of NS's packets
#   testbed.sh slow PREFIX HOST KBIT            a slow link between a home host and its router
#   testbed.sh heal PREFIX NS                   undo block, loss and slow in NS
#
# Every namespace is named PREFIX+role, so leftovers are recognisable and
# `down` removes exactly one testbed:
#
#   PREFIXnet    "the internet": bridge br0, no addresses of its own
#   PREFIXpub1   192.0.0.129   bootstrap, relay and mailbox node
#   PREFIXpub2   192.0.0.130   public nodes: identify trusts an observed
#   PREFIXpub3   192.0.0.131   address only after 4 distinct observers
#   PREFIXpub4   192.0.0.132   report it, and AutoNAT needs several servers
#   PREFIXr1     WAN 192.0.0.141, LAN 10.1.0.1/24   home router 1
#   PREFIXr2     WAN 192.0.0.142, LAN 10.2.0.1/24   home router 2
#   PREFIXr3     WAN 192.0.0.143, LAN 10.3.0.1/24   home router 3
#   PREFIXalice  10.1.0.2 behind r1
#   PREFIXbob    10.2.0.2 behind r2
#   PREFIXcarol  10.3.0.2 behind r3
#
# Public side: 192.0.0.128/25, special-purpose space (RFC 6890) that is
# never routed on the real internet, yet go-multiaddr's manet.IsPublicAddr
# counts it as public (only 192.0.0.0/26 is in its unroutable list); the
# documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) are not
# public to it, so AutoNAT, AutoRelay and hole punching would never engage
# there. nat_test.go checks these exact addresses with manet.
#
# No namespace has a route out of the testbed: public nodes know only the
# bridge's /25, routers only the /25 and their LAN, home hosts a default
# route via their router. Each router masquerades out of its WAN; its
# forward chain drops by default, accepts LAN -> WAN and, back in, only
# established/related traffic; its own input from the WAN accepts only
# established/related traffic (unsolicited packets are dropped silently,
# like a home router's firewall, rather than answered with a reset).
#
# NAT modes: "preserve" is plain masquerade (it keeps the source port when
# that port is free: endpoint-independent mapping, what hole punching
# needs); "random" is masquerade fully-random, a new random port for every
# flow ("symmetric" NAT, which defeats hole punching). A mode applies to
# new flows; conntrack keeps existing flows' mappings, so restart the
# daemons behind a router (on fresh ports) after changing its mode.
set -euo pipefail

readonly PUB_NET=192.0.0.128/25
readonly PUB_LEN=25

usage() {
	echo "usage: testbed.sh up|down PREFIX | nat PREFIX ROUTER preserve|random | udp PREFIX ROUTER drop|allow | block PREFIX NS all|ADDR... | loss PREFIX NS PERCENT | slow PREFIX HOST KBIT | heal PREFIX NS" >&2
	exit 2
}

# check_prefix: short, lower-case letters and digits, so that PREFIX+role
# fits the 15-character limit of namespace and interface names.
check_prefix() {
	[[ "$1" =~ ^[a-z][a-z0-9]{0,8}$ ]] || {
		echo "testbed.sh: prefix \"$1\" must be 1-9 lower-case letters or digits, starting with a letter" >&2
		exit 2
	}
}

# nsx NS CMD...: run CMD in namespace PREFIX+NS.
nsx() {
	local ns=$1
	shift
	ip netns exec "$P$ns" "$@"
}

mkns() {
	ip netns add "$P$1"
	nsx "$1" ip link set lo up
	nsx "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
}

# link NS_A IF_A NS_B IF_B: a veth pair created straight inside the two
# namespaces, so the host namespace never sees (or clashes with) it.
link() {
	ip link add "$2" netns "$P$1" type veth peer name "$4" netns "$P$3"
	nsx "$1" ip link set "$2" up
	nsx "$3" ip link set "$4" up
}

# public NAME ADDR: a namespace on the bridge with a public address.
public() {
	mkns "$1"
	link "$1" eth0 net "$1"
	nsx net ip link set "$1" master br0
	nsx "$1" ip addr add "$2/$PUB_LEN" dev eth0
}

# home N WAN HOST: router rN with WAN address WAN and LAN 10.N.0.0/24, and
# the namespace HOST at 10.N.0.2 behind it.
home() {
	local n=$1 wan=$2 host=$3 r="r$1"
	mkns "$r"
	link "$r" wan net "$r"
	nsx net ip link set "$r" master br0
	nsx "$r" ip addr add "$wan/$PUB_LEN" dev wan
	nsx "$r" sysctl -qw net.ipv4.ip_forward=1

	mkns "$host"
	link "$r" lan "$host" eth0
	nsx "$r" ip addr add "10.$n.0.1/24" dev lan
	nsx "$host" ip addr add "10.$n.0.2/24" dev eth0
	nsx "$host" ip route add default via "10.$n.0.1"

	nsx "$r" nft -f - <<-EOF
	table ip testbed {
		chain postrouting {
			type nat hook postrouting priority srcnat; policy accept;
			oifname "wan" masquerade
		}
		chain udpblock {
			type filter hook forward priority filter - 10; policy accept;
		}
		chain forward {
			type filter hook forward priority filter; policy drop;
			ct state established,related accept
			iifname "lan" oifname "wan" accept
		}
		chain input {
			type filter hook input priority filter; policy accept;
			iifname "wan" ct state established,related accept
			iifname "wan" drop
		}
	}
	EOF
}

up() {
	if ip netns list | grep -q "^${P}net\b"; then
		echo "testbed.sh: a testbed with prefix $P is already up" >&2
		exit 1
	fi
	mkns net
	nsx net ip link add br0 type bridge
	nsx net ip link set br0 up

	public pub1 192.0.0.129
	public pub2 192.0.0.130
	public pub3 192.0.0.131
	public pub4 192.0.0.132
	home 1 192.0.0.141 alice
	home 2 192.0.0.142 bob
	home 3 192.0.0.143 carol
}

# down: stop what still runs in the testbed's namespaces, then delete them.
down() {
	local ns pids
	for ns in $(ip netns list | awk '{print $1}' | grep "^$P" || true); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [ -n "$pids" ]; then
			kill -9 $pids 2>/dev/null || true
		fi
		ip netns del "$ns" 2>/dev/null || true
	done
}

# router R: check that R names a router of this testbed.
router() {
	[[ "$1" =~ ^r[0-9]$ ]] || usage
	ip netns list | grep -q "^$P$1\b" || {
		echo "testbed.sh: no router namespace $P$1" >&2
		exit 1
	}
}

nat() {
	router "$1"
	local rule
	case "$2" in
	preserve) rule='oifname "wan" masquerade' ;;
	random) rule='oifname "wan" masquerade fully-random' ;;
	*) usage ;;
	esac
	nsx "$1" nft flush chain ip testbed postrouting
	nsx "$1" nft add rule ip testbed postrouting "$rule"
}

udp() {
	router "$1"
	nsx "$1" nft flush chain ip testbed udpblock
	case "$2" in
	drop) nsx "$1" nft add rule ip testbed udpblock meta l4proto udp drop ;;
	allow) ;;
	*) usage ;;
	esac
}

# The chaos table of a namespace holds the faults block and loss inject,
# on its own input and output (so forwarded traffic of a router is not
# touched); heal deletes it.
chaos_table() {
	nsx "$1" nft add table ip chaos
	nsx "$1" nft add chain ip chaos in '{ type filter hook input priority filter - 20; policy accept; }'
	nsx "$1" nft add chain ip chaos out '{ type filter hook output priority filter - 20; policy accept; }'
}

member() {
	ip netns list | grep -q "^$P$1\b" || {
		echo "testbed.sh: no namespace $P$1" >&2
		exit 1
	}
}

block() {
	local ns=$1
	shift
	member "$ns"
	chaos_table "$ns"
	if [ "$1" = all ]; then
		nsx "$ns" nft add rule ip chaos in iifname != "lo" drop
		nsx "$ns" nft add rule ip chaos out oifname != "lo" drop
		return
	fi
	local set
	set=$(printf '%s, ' "$@")
	set="{ ${set%, } }"
	nsx "$ns" nft add rule ip chaos in ip saddr "$set" drop
	nsx "$ns" nft add rule ip chaos out ip daddr "$set" drop
}

loss() {
	member "$1"
	[[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -le 100 ] || usage
	chaos_table "$1"
	nsx "$1" nft add rule ip chaos in iifname != "lo" numgen random mod 100 "<" "$2" drop
	nsx "$1" nft add rule ip chaos out oifname != "lo" numgen random mod 100 "<" "$2" drop
}

# home_router HOST: the router namespace (rN) in front of a home host,
# from the host's default route 10.N.0.1.
home_router() {
	local gw
	gw=$(nsx "$1" ip route show default | awk '{print $3}')
	[[ "$gw" =~ ^10\.([0-9])\.0\.1$ ]] || {
		echo "testbed.sh: $P$1 is no home host" >&2
		exit 1
	}
	echo "r${BASH_REMATCH[1]}"
}

# slow HOST KBIT: a token bucket of KBIT kbit/s each way between a home
# host and its router (the router's lan shapes what goes to the host),
# queueing up to a second before it drops: a congested mobile or rural
# link, as tc netem is not always there to add plain delay.
slow() {
	member "$1"
	[[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 8 ] || usage
	local r
	r=$(home_router "$1")
	nsx "$1" tc qdisc replace dev eth0 root tbf rate "$2kbit" burst 4kb latency 1s
	nsx "$r" tc qdisc replace dev lan root tbf rate "$2kbit" burst 4kb latency 1s
}

heal() {
	member "$1"
	nsx "$1" nft delete table ip chaos 2>/dev/null || true
	if nsx "$1" tc qdisc show dev eth0 2>/dev/null | grep -q tbf; then
		nsx "$1" tc qdisc del dev eth0 root
		nsx "$(home_router "$1")" tc qdisc del dev lan root 2>/dev/null || true
	fi
}

[ $# -ge 2 ] || usage
cmd=$1 P=$2
check_prefix "$P"
case "$cmd" in
up)
	[ $# -eq 2 ] || usage
	# A half-built testbed is removed again.
	trap 'down' ERR
	up
	;;
down)
	[ $# -eq 2 ] || usage
	down
	;;
nat | udp | loss | slow)
	[ $# -eq 4 ] || usage
	"$cmd" "$3" "$4"
	;;
block)
	[ $# -ge 4 ] || usage
	shift 2
	block "$@"
	;;
heal)
	[ $# -eq 3 ] || usage
	heal "$3"
	;;
*) usage ;;
esac
