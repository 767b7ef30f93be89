using Dingo.Cells;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cells;

/// <summary>What a stopped node's detail says of its last start, read from PostgreSQL's own log.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class StartFailureLogTests
{
    private const string Start = "2026-12-05 07:16:05.733 UTC [24458] LOG:  starting PostgreSQL 15.20 (Debian 15.20-0+deb12u1) on x86_64-pc-linux-gnu";

    [Fact]
    public void A_port_held_by_another_process_is_named_with_its_cause()
    {
        var log = string.Join('\n',
            "2026-12-05 07:10:00.000 UTC [100] FATAL:  password authentication failed for user \"x\"",
            Start,
            "2026-12-05 07:16:05.733 UTC [24458] LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
            "2026-12-05 07:16:05.733 UTC [24458] HINT:  Is another postmaster already running on port 31386? If not, wait a few seconds and retry.",
            "2026-12-05 07:16:05.733 UTC [24458] WARNING:  could not create listen socket for \"127.0.0.1\"",
            "2026-12-05 07:16:05.734 UTC [24458] FATAL:  could not create any TCP/IP sockets",
            "2026-12-05 07:16:05.736 UTC [24458] LOG:  database system is shut down");
        Assert.Equal("FATAL: could not create any TCP/IP sockets (could not bind IPv4 address \"127.0.0.1\": Address already in use)",
            LocalProcessRuntime.StartFailureIn(log));
    }

    [Fact]
    public void The_first_fatal_after_the_last_start_is_the_reason()
    {
        var log = string.Join('\n', Start,
            "2026-12-05 07:16:05.734 UTC [24458] FATAL:  lock file \"/tmp/x/.s.PGSQL.35999.lock\" already exists",
            "2026-12-05 07:16:05.734 UTC [24458] HINT:  Is another postmaster (PID 24439) using socket file \"/tmp/x/.s.PGSQL.35999\"?",
            "2026-12-05 07:16:05.736 UTC [24458] LOG:  database system is shut down");
        Assert.Equal("FATAL: lock file \"/tmp/x/.s.PGSQL.35999.lock\" already exists", LocalProcessRuntime.StartFailureIn(log));
    }

    [Fact]
    public void A_start_that_became_ready_says_nothing_whatever_came_after()
    {
        // Killed or crashed after it served: a later connection's FATAL is no reason the node is stopped.
        var log = string.Join('\n', Start,
            "2026-12-05 07:16:05.800 UTC [24458] LOG:  database system is ready to accept connections",
            "2026-12-05 07:16:06.000 UTC [24470] FATAL:  password authentication failed for user \"x\"");
        Assert.Null(LocalProcessRuntime.StartFailureIn(log));
        Assert.Null(LocalProcessRuntime.StartFailureIn(""));
        Assert.Null(LocalProcessRuntime.StartFailureIn("2026-12-05 07:16:06.000 UTC [24470] FATAL:  the data directory is gone"));
    }
}
