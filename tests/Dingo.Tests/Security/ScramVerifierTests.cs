using Dingo.Postgres;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

/// <summary>
/// The SCRAM-SHA-256 verifier a claimed warm node's superuser gets (the Docker runtime's pool hands PostgreSQL the verifier,
/// never the password): the expected value below was computed with Python's hashlib (PBKDF2-HMAC-SHA-256 and HMAC), an
/// implementation independent of .NET's, for the RFC 7677 example's password and salt. WarmPoolTests logs in with the
/// password against real PostgreSQL.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ScramVerifierTests
{
    [Fact]
    public void The_verifier_is_what_PostgreSQL_stores_for_the_password()
    {
        var salt = Convert.FromBase64String("W22ZaJ0SNY7soEsUEjb6gQ==");
        Assert.Equal(
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            Secrets.ScramVerifier("pencil", salt));
    }

    [Fact]
    public void Each_verifier_has_its_own_salt_and_never_holds_the_password()
    {
        var password = Secrets.Password();
        var a = Secrets.ScramVerifier(password);
        var b = Secrets.ScramVerifier(password);
        Assert.NotEqual(a, b);
        Assert.DoesNotContain(password, a, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("pässword")]
    [InlineData("tab\there")]
    public void A_password_SASLprep_could_change_is_refused(string password)
    {
        Assert.False(Secrets.ScramReady(password));
        Assert.Throws<ArgumentException>(() => Secrets.ScramVerifier(password));
    }
}
