using Dingo.Tests.Support;
using System.Text;
using Dingo.Broker.Osb;

namespace Dingo.Tests.Broker;

[Trait(Tier.Name, Tier.Fast)]
public sealed class OriginatingIdentityTests
{
    [Fact]
    public void The_platform_and_decoded_identity_are_logged()
    {
        var value = Convert.ToBase64String(Encoding.UTF8.GetBytes("{\"user_id\":\"683ea748\"}"));
        Assert.Equal("cloudfoundry {\"user_id\":\"683ea748\"}", OsbMiddleware.OriginatingIdentity($"cloudfoundry {value}"));
    }

    [Theory]
    [InlineData("", "(no originating identity)")]
    [InlineData("kubernetes", "kubernetes")]
    [InlineData("cloudfoundry !!!not-base64", "cloudfoundry (undecodable identity)")]
    public void Odd_headers_never_fail_the_request(string header, string expected) =>
        Assert.Equal(expected, OsbMiddleware.OriginatingIdentity(header));
}
