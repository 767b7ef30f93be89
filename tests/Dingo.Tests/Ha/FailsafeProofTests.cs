using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>The signed failsafe exchange: only the instance's own agents can ask, and only the asked member can confirm that ask.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class FailsafeProofTests
{
    private static readonly Credentials Superuser = new("dingo_admin", "S3cretSuperuserPassword0123456789");
    private readonly FailsafeProof _proof = FailsafeProof.For("inst-1", Superuser);

    [Fact]
    public void An_ask_verifies_only_for_its_leader_member_and_nonce()
    {
        var ask = _proof.Ask("n-leader", "n-member", "nonce1");
        Assert.True(_proof.IsAsk("n-leader", "n-member", "nonce1", ask));
        Assert.False(_proof.IsAsk("n-other", "n-member", "nonce1", ask));
        Assert.False(_proof.IsAsk("n-leader", "n-other", "nonce1", ask));
        Assert.False(_proof.IsAsk("n-leader", "n-member", "nonce2", ask));
        Assert.False(_proof.IsAsk("n-leader", "n-member", "nonce1", null));
        Assert.False(_proof.IsAsk("n-leader", "n-member", "nonce1", ask[..^1] + (ask[^1] == '0' ? '1' : '0')));
        // An ask is no confirmation, and the other way round: a member cannot echo the ask back as its answer.
        Assert.False(_proof.IsConfirmation("n-leader", "n-member", "nonce1", ask));
        Assert.False(_proof.IsAsk("n-leader", "n-member", "nonce1", _proof.Confirm("n-leader", "n-member", "nonce1")));
    }

    [Fact]
    public void Another_instance_or_another_password_signs_differently()
    {
        var ask = _proof.Ask("n-leader", "n-member", "nonce1");
        Assert.False(FailsafeProof.For("inst-2", Superuser).IsAsk("n-leader", "n-member", "nonce1", ask));
        Assert.False(FailsafeProof.For("inst-1", Superuser with { Password = Superuser.Password + "x" }).IsAsk("n-leader", "n-member", "nonce1", ask));
        Assert.True(FailsafeProof.For("inst-1", Superuser).IsAsk("n-leader", "n-member", "nonce1", ask));
        Assert.DoesNotContain(Superuser.Password, _proof.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Nonces_are_fresh()
    {
        var nonces = Enumerable.Range(0, 100).Select(_ => FailsafeProof.NewNonce()).ToHashSet();
        Assert.Equal(100, nonces.Count);
        Assert.All(nonces, n => Assert.Matches("^[0-9a-f]{32}$", n));
    }

    [Fact]
    public void The_leader_takes_only_the_asked_members_signed_confirmation_of_this_ask()
    {
        var good = $$"""{"confirmed":true,"proof":"{{_proof.Confirm("n-leader", "n-member", "nonce1")}}"}""";
        Assert.Null(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-member", "nonce1", good));
        // A forged 200 (anyone on the node network), a replayed confirmation of an older ask, another member's.
        Assert.NotNull(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-member", "nonce1", """{"confirmed":true}"""));
        Assert.NotNull(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-member", "nonce2", good));
        Assert.NotNull(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-third", "nonce1", good));
        Assert.NotNull(FailsafeMember.ConfirmationProblem(FailsafeProof.For("inst-2", Superuser), "n-leader", "n-member", "nonce1", good));
        Assert.NotNull(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-member", "nonce1", """{"confirmed":false,"reason":"no"}"""));
        Assert.NotNull(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-member", "nonce1", "ok"));
        Assert.NotNull(FailsafeMember.ConfirmationProblem(_proof, "n-leader", "n-member", "nonce1", """{"confirmed":"true","proof":1}"""));
    }
}
