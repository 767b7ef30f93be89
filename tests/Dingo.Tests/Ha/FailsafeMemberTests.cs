using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// A member's side of the failsafe exchange (<see cref="FailsafeMember"/>): it confirms a leader's signed ask only while
/// it streams from that leader, from a fresh observation, and then promises not to take the key for a TTL.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class FailsafeMemberTests
{
    private static readonly Credentials Superuser = new("dingo_admin", "S3cretSuperuserPassword0123456789");
    private static readonly TimeSpan Ttl = TimeSpan.FromSeconds(4);
    private static readonly NodeSpec Me = new() { NodeId = "n-member", InstanceId = "inst-1", CellId = "cell-2", Port = 15002 };
    private static readonly InstanceRecord Record = new()
    {
        Id = "inst-1", ServiceId = Catalog.ServiceId, PlanId = Catalog.ClusterPlanId, OrganizationGuid = "o", SpaceGuid = "s",
        Port = 20001, NodeCount = 2, Superuser = Superuser,
    };

    private static HaInput Observed(bool answering = true, bool inRecovery = true, bool streaming = true, double ageSeconds = 0) => new(
        "n-member", Synchronous: false,
        new LocalState(true, true, answering, inRecovery, Lsn: 1, Timeline: 1, streaming, "n-leader", TimeSpan.Zero, false),
        EtcdReachable: false, Leader: null, HoldsLease: false, SinceRenewal: TimeSpan.Zero, LeaderOptime: null, Sync: null, Members: [],
        Switchover: null, ClusterInitialised: true, BootstrapCandidate: false, DateTimeOffset.UtcNow.AddSeconds(-ageSeconds));

    private static FailsafeAsk Ask(string leader = "n-leader", bool signed = true)
    {
        var nonce = FailsafeProof.NewNonce();
        return new FailsafeAsk(leader, nonce, signed ? FailsafeProof.For("inst-1", Superuser).Ask(leader, "n-member", nonce) : "0000");
    }

    [Theory]
    // what is wrong || the reply's refusal (null: confirmed)
    [InlineData("nothing", null)]
    [InlineData("no record", "no instance record yet")]
    [InlineData("no observation", "no observation yet")]
    [InlineData("not answering", "I am not a running replica")]
    [InlineData("writable", "I am not a running replica")]
    [InlineData("not streaming", "I do not stream from n-leader (following n-leader)")]
    [InlineData("follows another", "I do not stream from n-leader (following n-other)")]
    [InlineData("old observation", "my last observation is too old to tell")]
    public void A_member_confirms_only_while_it_streams_from_the_asking_leader(string wrong, string? refusal)
    {
        var member = new FailsafeMember(Me, guard: null, new HttpClient());
        var observed = wrong switch
        {
            "no observation" => null,
            "not answering" => Observed(answering: false),
            "writable" => Observed(inRecovery: false),
            "not streaming" => Observed(streaming: false),
            "old observation" => Observed(ageSeconds: 5),
            _ => Observed(),
        };
        var ask = Ask();
        var reply = member.Answer(ask, wrong == "no record" ? null : Record, observed, wrong == "follows another" ? "n-other" : "n-leader", Ttl);
        Assert.Equal(refusal, reply.Refusal);
        if (refusal is null)
        {
            Assert.True(FailsafeProof.For("inst-1", Superuser).IsConfirmation("n-leader", "n-member", ask.Nonce, reply.Proof));
            Assert.Equal("n-leader", member.PromisedTo(Ttl)); // it takes no free key for a TTL
            Assert.Null(member.PromisedTo(TimeSpan.Zero));
        }
        else Assert.Null(member.PromisedTo(Ttl));
    }

    [Fact]
    public void An_unsigned_ask_is_forbidden_and_promises_nothing()
    {
        var member = new FailsafeMember(Me, guard: null, new HttpClient());
        var reply = member.Answer(Ask(signed: false), Record, Observed(), "n-leader", Ttl);
        Assert.True(reply.Forbidden);
        Assert.Null(member.PromisedTo(Ttl));
    }

    [Fact]
    public async Task A_leader_asks_every_member_and_hears_why_one_did_not_confirm()
    {
        var leader = new FailsafeMember(Me with { NodeId = "n-leader" }, guard: null, new HttpClient { Timeout = TimeSpan.FromSeconds(2) });
        var port = FreePorts.One(); // nothing listens there
        var refusals = await leader.AskAllAsync(Record, [("n-member", "127.0.0.1", port)], CancellationToken.None);
        Assert.StartsWith("n-member: ", Assert.Single(refusals));
        Assert.Equal("n-member: no instance record to sign the ask with", Assert.Single(await leader.AskAllAsync(null, [("n-member", "127.0.0.1", port)], CancellationToken.None)));
    }
}
